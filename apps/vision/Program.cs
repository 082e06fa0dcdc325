// ssm-vision: image classification with state-space models (Vim, VMamba) and a CNN baseline. See VisionCli.
return await Ssm.Vision.Cli.VisionCli.RunAsync(args, Console.Out, Console.Error);
