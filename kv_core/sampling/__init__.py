"""What every sampling stage shares: ``schedulers`` (the release's noise schedule, the
DDPM/DDIM/DPM++ 2M samplers and the schedule in sigma space), ``noise`` (the random
streams of the stages) and ``loop`` (the step loop, host hooks, where a stage runs).
Which stage feeds its network what lives with the stage (``kv_core.stages``)."""
