"""BoigSD: Stable Diffusion aligned to a BoigLLM-defined reward with DDPO (Black et al., 2023).

The denoising chain is a Markov decision process: each DDIM step is a Gaussian policy whose
log-probability ``logprob`` computes; ``sampling`` draws trajectories and keeps their latents
and log-probabilities; ``ppo`` turns rewards into clipped policy-gradient updates of a LoRA on
the UNet; ``train`` runs the loop and publishes the LoRA the generator serves.
"""
