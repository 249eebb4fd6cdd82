"""DDPO hyper-parameters, each documented, with presets sized to a hardware budget.

Defaults follow public DDPO practice (Black et al. 2023, and the ddpo-pytorch and trl
recipes): eta 1.0, guidance 5, learning rate 3e-4 on a rank-4 LoRA, PPO clip 1e-4, advantage
clip 5, one inner epoch, half the steps trained per sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from services.common.boigsd_lora import LORA_TARGETS
from services.common.checkpoints import JsonScalar


@dataclass(frozen=True)
class DdpoConfig:
    # --- sampling: the trajectories the policy is judged on ---
    resolution: int = 64
    """Image side in pixels (a multiple of 8); the world SD and the tiny pipeline draw 64."""
    sample_steps: int = 20
    """Denoising steps T per trajectory: each is one action of the MDP."""
    eta: float = 1.0
    """DDIM stochasticity (0 is deterministic and has no density; 1 is DDPM's variance)."""
    guidance_scale: float = 5.0
    """Classifier-free guidance, the same in sampling and training (1 disables it)."""
    sample_batch_size: int = 8
    """Images drawn per sampling pass, per process: launched on several GPUs, an epoch judges
    processes x sample_batch_size x sample_batches images."""
    sample_batches: int = 2
    """Sampling passes per epoch: an epoch judges sample_batch_size x sample_batches images."""
    images_per_prompt: int = 1
    """Images drawn for each prompt picked in a pass. With several, each image's advantage
    compares it with its siblings of the same prompt (what the policy did), not with other
    prompts (which prompt it drew). Must divide sample_batch_size."""
    # --- the update ---
    train_batch_size: int = 4
    """Trajectories per gradient computation (one UNet forward per trained step)."""
    gradient_accumulation_steps: int = 2
    """Minibatches whose gradients add up before each optimizer step."""
    inner_epochs: int = 1
    """Passes over an epoch's samples (more reuses samples; the PPO clip keeps it safe)."""
    timestep_fraction: float = 0.5
    """Share of the T steps of each minibatch that are trained (the rest are skipped)."""
    learning_rate: float = 3e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    clip_range: float = 1e-4
    """PPO: how far each step's probability ratio may move from 1 before its gradient stops."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to +/- this many standard deviations."""
    kl_coef: float = 0.0
    """Weight of a penalty on each trained step's KL divergence from the base model's step
    (exact for the two Gaussians, per latent value): keeps the policy near images the base
    model draws, the guard against reward hacking that RLHF uses. 0 turns it off and skips
    the base model's forward pass (a third more compute per trained step when on)."""
    # --- advantages ---
    per_prompt_buffer: int = 32
    """Recent rewards kept per prompt to standardise its new ones."""
    per_prompt_min_count: int = 8
    """Below this many, a prompt's rewards are standardised against the batch."""
    # --- the LoRA ---
    lora_rank: int = 4
    lora_alpha: int = 4
    lora_targets: str = "attention"
    """Which UNet modules the LoRA adapts (``boigsd_lora.LORA_TARGETS``): "attention" (the
    public DDPO default) or "all" (also the transformer projections, feed-forward and ResNet
    convolutions)."""
    # --- the hardware ---
    mixed_precision: str = "no"
    """"no", "fp16" or "bf16": autocast of the UNet's forward and the precision the frozen
    weights (UNet, VAE, text encoder) are loaded in; the LoRA, its gradients and the optimizer
    stay float32, and fp16 scales the loss (accelerate's GradScaler). A GPU setting: CPUs
    here compute bf16 no faster than float32."""
    # --- the run ---
    epochs: int = 10
    seed: int = 0
    eval_every: int = 5
    """Every this many epochs (and before the first), the policy is judged on fixed prompts
    and seeds: a reward curve free of which prompts an epoch happened to draw."""
    eval_seeds: int = 2
    """Images per evaluation prompt (the same seeds every time)."""
    eval_eta: float = 0.0
    """DDIM stochasticity of evaluation draws. 0, as the generator serves: early stopping
    then keeps the LoRA whose *served* images score best, not the one whose training-time
    (eta 1) samples do, which need not be the same."""
    eval_steps: int = 0
    """Denoising steps of evaluation draws (0: ``sample_steps``); a job sets the steps its
    model folder recommends for serving."""
    patience: int = 0
    """Early stopping: the run stops after this many evaluations without a new best held-out
    reward, and the LoRA it publishes is the best one evaluated (0: never stop early, publish
    the last). The held-out prompts are training-split contexts the run does not train on."""

    def __post_init__(self) -> None:
        if self.kl_coef < 0 or self.patience < 0:
            raise ValueError("kl_coef and patience must be >= 0")
        if self.patience and not self.eval_every:
            raise ValueError("early stopping (patience) needs evaluations (eval_every > 0)")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}"
            )
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(
                f"lora_targets must be one of {sorted(LORA_TARGETS)}, got {self.lora_targets!r}"
            )
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {self.resolution}")
        if self.eta <= 0:
            raise ValueError("eta must be > 0: DDPO needs each step's density")
        if self.eval_eta < 0 or self.eval_steps < 0:
            raise ValueError("eval_eta and eval_steps must be >= 0")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError("timestep_fraction must be in (0, 1]")
        if self.sample_batch_size % self.images_per_prompt:
            raise ValueError("images_per_prompt must divide sample_batch_size")
        if self.sample_batch_size * self.sample_batches % self.train_batch_size:
            raise ValueError(
                "train_batch_size must divide the samples of an epoch "
                f"({self.sample_batch_size} x {self.sample_batches})"
            )

    @property
    def trained_steps(self) -> int:
        return max(1, round(self.sample_steps * self.timestep_fraction))

    def hyperparameters(self) -> dict[str, JsonScalar]:
        return dict(asdict(self))


def tiny_preset() -> DdpoConfig:
    """The tiny random pipeline in tests: seconds per epoch."""
    return DdpoConfig(
        sample_steps=6,
        sample_batch_size=4,
        sample_batches=1,
        train_batch_size=2,
        gradient_accumulation_steps=1,
        epochs=2,
    )


def cpu_preset() -> DdpoConfig:
    """The world SD on 2 CPU cores: 64 images an epoch (16 prompts x 4), ~55 s an epoch with
    the scorer beside it, 25 epochs (~25 min) judged on held-out prompts every 5.

    Ten times public DDPO's learning rate and clip: at 3e-4 the policy did not move in 14
    epochs (KL ~1e-10), while 1e-2 moved it the wrong way. Four images per prompt, so
    advantages compare siblings of one prompt. Each optimizer step averages 32 trajectories
    (two steps an epoch): with steps of 4 (16 images an epoch, 4 steps) no guarded run's
    held-out reward beat the untrained adapter, and one unguarded run collapsed after epoch
    100. The held-out reward is judged on images drawn as served (eval_eta 0) and the run
    stops 3 evaluations after its best, publishing the best LoRA. README, BoigSD.
    """
    return DdpoConfig(
        sample_steps=20,
        sample_batch_size=8,
        sample_batches=8,
        images_per_prompt=4,
        per_prompt_min_count=4,
        gradient_accumulation_steps=8,
        learning_rate=3e-3,
        clip_range=1e-2,
        epochs=25,
        eval_every=5,
        patience=3,
    )


def gpu_preset() -> DdpoConfig:
    """SD 1.5 at 512 px on GPUs, after ddpo-pytorch's per-GPU settings (sampling batches of 8,
    4 per epoch, train batch 4 with accumulation 2, lr 3e-4, an fp16 pipeline under a float32
    LoRA).

    Per process (GPU): 4 x 8 images an epoch in 4 optimizer steps; launched on N GPUs
    (``BoigsdJob.processes``) an epoch judges 32 N images and gradients are averaged across
    them. 4 images per prompt as on the CPU; held-out evaluation every 10 epochs."""
    return DdpoConfig(
        resolution=512,
        sample_steps=50,
        sample_batch_size=8,
        sample_batches=4,
        images_per_prompt=4,
        train_batch_size=4,
        gradient_accumulation_steps=2,
        mixed_precision="fp16",
        epochs=100,
        eval_every=10,
        patience=3,
    )


PRESETS = {"tiny": tiny_preset, "cpu": cpu_preset, "gpu": gpu_preset}


def preset(name: str, **overrides: object) -> DdpoConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown DDPO preset {name!r}; known: {sorted(PRESETS)}")
    return replace(PRESETS[name](), **overrides)  # type: ignore[arg-type]
