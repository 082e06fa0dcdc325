// ssm-diffuse: class-conditional image diffusion with state-space models (DiffuSSM, DiS). See DiffuseCli.
Console.OutputEncoding = new System.Text.UTF8Encoding(false);
return Ssm.Apps.Diffusion.DiffuseCli.Run(args);
