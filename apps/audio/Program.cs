// ssm-audio: raw-waveform generation with state-space models (SaShiMi). See AudioCli.
Console.OutputEncoding = new System.Text.UTF8Encoding(false);
return Ssm.Apps.Audio.AudioCli.Run(args);
