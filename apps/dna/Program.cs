// ssm-dna: DNA language models (log-likelihood, variant effects) and Caduceus classifiers. See DnaCli.
Console.OutputEncoding = new System.Text.UTF8Encoding(false);
return Ssm.Apps.Dna.DnaCli.Run(args);
