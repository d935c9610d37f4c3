#!/usr/bin/env python3
"""Write reference scheduler trajectories from diffusers' own scheduler classes.

Not part of the build or the tests: it regenerates test/fixtures/diffusers-schedulers/ from a
checkout of diffusers' scheduler sources (PYTHONPATH must make `diffusers.schedulers.*`
importable) and torch. The output has the layout of ../shared/fixtures/schedulers/ (manifest.json
+ one .bin per run), so test/schedulers.test.ts reads both the same way.

    PYTHONPATH=/path/to/diffusers-src python3 tools/diffusers-scheduler-refs.py OUT_DIR

Every run: SD 1.5's scheduler_config (plus per-run overrides) through `Class.from_config`, a
seeded initial latent [1,4,4,4], a fake model eps = 0.1 * model_input * cos(t / 100), and a
seeded torch.Generator passed to step(); every normal draw a step makes is logged so an
implementation can replay it.
"""
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

SD15 = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# (module, class)
CLASSES = {
    "DDIMScheduler": "scheduling_ddim",
    "EulerDiscreteScheduler": "scheduling_euler_discrete",
    "EulerAncestralDiscreteScheduler": "scheduling_euler_ancestral_discrete",
    "DPMSolverMultistepScheduler": "scheduling_dpmsolver_multistep",
    "PNDMScheduler": "scheduling_pndm",
    "LMSDiscreteScheduler": "scheduling_lms_discrete",
    "HeunDiscreteScheduler": "scheduling_heun_discrete",
    "DPMSolverSDEScheduler": "scheduling_dpmsolver_sde",
    "UniPCMultistepScheduler": "scheduling_unipc_multistep",
    "LCMScheduler": "scheduling_lcm",
}

# Options a later diffusers added with a default that changed 0.27's behaviour: the harness
# sets them back to 0.27's behaviour and leaves them out of the recorded config.
PIN_0_27 = {
    "UniPCMultistepScheduler": {"final_sigmas_type": "sigma_min"},
}

SHAPE = (1, 4, 4, 4)


class Log:
    def __init__(self):
        self.draws = []


def patch_noise(module, log):
    if hasattr(module, "randn_tensor"):
        orig = module.randn_tensor

        def recording(shape, generator=None, device=None, dtype=None, layout=None, **kw):
            t = orig(shape, generator=generator, device=device, dtype=dtype, layout=layout)
            log.draws.append(t.detach().clone())
            return t

        module.randn_tensor = recording
    if hasattr(module, "BrownianTreeNoiseSampler"):
        # diffusers draws DPM-SDE noise from torchsde's Brownian tree, seeded from torch's global
        # RNG: not reproducible from a generator. Standard normal draws in its place, logged, are
        # what a replaying implementation must consume.
        class GeneratorNoiseSampler:
            def __init__(self, x, sigma_min=None, sigma_max=None, seed=None, transform=lambda x: x):
                self.shape = x.shape
                self.gen = torch.Generator().manual_seed(4321)

            def __call__(self, sigma, sigma_next):
                t = torch.randn(self.shape, generator=self.gen, dtype=torch.float32)
                log.draws.append(t.clone())
                return t

        module.BrownianTreeNoiseSampler = GeneratorNoiseSampler


class Bin:
    def __init__(self):
        self.parts = []
        self.offset = 0

    def add(self, arr, dtype):
        a = np.ascontiguousarray(np.asarray(arr, dtype=dtype))
        ref = {"dtype": str(a.dtype), "shape": list(a.shape), "offset": self.offset, "nbytes": a.nbytes}
        self.parts.append(a.tobytes())
        self.offset += a.nbytes
        return ref


def f64(t):
    return t.detach().double().cpu().numpy() if torch.is_tensor(t) else np.asarray(t, dtype=np.float64)


def run_one(out_dir, name, cls_name, overrides, steps, step_kwargs):
    module = importlib.import_module(f"diffusers.schedulers.{CLASSES[cls_name]}")
    log = Log()
    patch_noise(module, log)
    cls = getattr(module, cls_name)
    pin = PIN_0_27.get(cls_name, {})
    sched = cls.from_config({**SD15, **overrides, **pin})
    sched.set_timesteps(steps)
    b = Bin()
    tensors = {"timesteps": b.add(f64(sched.timesteps), np.float64)}
    if hasattr(sched, "sigmas") and sched.sigmas is not None:
        tensors["sigmas"] = b.add(f64(sched.sigmas), np.float64)
    tensors["alphas_cumprod"] = b.add(f64(sched.alphas_cumprod), np.float64)
    init_sigma = float(sched.init_noise_sigma)
    noise0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    x = noise0 * sched.init_noise_sigma
    tensors["initial_noise"] = b.add(noise0.numpy(), np.float32)
    tensors["x_T"] = b.add(x.numpy(), np.float32)
    gen = torch.Generator().manual_seed(1234)
    recs = []
    for i, t in enumerate(sched.timesteps):
        mi = sched.scale_model_input(x, t)
        eps = 0.1 * mi * math.cos(float(t) / 100)
        log.draws.clear()
        kwargs = dict(step_kwargs)
        if "generator" in sched.step.__code__.co_varnames:
            kwargs["generator"] = gen
        out = sched.step(eps, t, x, **kwargs)
        prev = out.prev_sample
        rec = {
            "i": i,
            "t": float(t),
            "model_input": b.add(mi.numpy(), np.float32),
            "eps": b.add(eps.numpy(), np.float32),
            "prev_sample": b.add(prev.numpy(), np.float32),
        }
        if log.draws:
            rec["noise"] = [b.add(d.numpy(), np.float32) for d in log.draws]
        recs.append(rec)
        x = prev
    config = {k: v for k, v in dict(sched.config).items() if k not in pin}
    fname = f"{name}.bin"
    (out_dir / fname).write_bytes(b"".join(b.parts))
    return {
        "name": name,
        "file": fname,
        "class": cls_name,
        "config": config,
        "config_overrides": overrides,
        "step_kwargs": step_kwargs,
        "num_inference_steps": steps,
        "timesteps_dtype": str(sched.timesteps.dtype) if torch.is_tensor(sched.timesteps) else str(np.asarray(sched.timesteps).dtype),
        "num_timesteps": len(sched.timesteps),
        "init_noise_sigma": init_sigma,
        "noise_seed": 4321 if cls_name == "DPMSolverSDEScheduler" else 1234,
        "tensors": tensors,
        "steps": recs,
        "final_abs_mean": float(x.abs().mean()),
    }


def main():
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    base = [
        ("ddim", "DDIMScheduler", {}, {}),
        ("euler", "EulerDiscreteScheduler", {}, {}),
        ("euler_a", "EulerAncestralDiscreteScheduler", {}, {}),
        ("dpmpp_2m", "DPMSolverMultistepScheduler", {}, {}),
        ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, {}),
        ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
        ("pndm", "PNDMScheduler", {}, {}),
        ("lms", "LMSDiscreteScheduler", {}, {}),
        ("heun", "HeunDiscreteScheduler", {}, {}),
        ("dpmpp_sde", "DPMSolverSDEScheduler", {}, {}),
        ("unipc", "UniPCMultistepScheduler", {}, {}),
        ("lcm", "LCMScheduler", {}, {}),
    ]
    runs = []
    for steps in (20, 50):
        for name, cls, ov, kw in base:
            runs.append((f"{name}_steps{steps}", cls, ov, steps, kw))
    # DDIM with eta, v-prediction (SD 2.x) and the other timestep spacings, at 20 steps
    runs.append(("ddim_eta1_steps20", "DDIMScheduler", {}, 20, {"eta": 1.0}))
    # PNDM with its Runge-Kutta warm-up steps (skip_prk_steps false), DDIM with set_alpha_to_one
    runs.append(("pndm_prk_steps20", "PNDMScheduler", {"skip_prk_steps": False}, 20, {}))
    runs.append(("ddim_alpha_one_steps20", "DDIMScheduler", {"set_alpha_to_one": True}, 20, {}))
    # SD-Turbo style: Euler a, trailing spacing, 1 and 4 steps; LCM at 4 steps
    runs.append(("euler_a_trailing_steps1", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, 1, {}))
    runs.append(("euler_a_trailing_steps4", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, 4, {}))
    runs.append(("lcm_steps4", "LCMScheduler", {}, 4, {}))
    for name, cls, ov, kw in base:
        if name != "lcm":
            runs.append((f"{name}_vpred_steps20", cls, {**ov, "prediction_type": "v_prediction"}, 20, kw))
    for spacing in ("leading", "trailing", "linspace"):
        for name, cls, ov, kw in base:
            if name not in ("lcm", "dpmpp_2m_karras"):
                runs.append((f"{name}_{spacing}_steps20", cls, {**ov, "timestep_spacing": spacing}, 20, kw))
    manifest_runs = []
    for name, cls, ov, steps, kw in runs:
        try:
            manifest_runs.append(run_one(out_dir, name, cls, ov, steps, kw))
        except Exception as e:  # a config the class rejects is reported, not written
            print(f"skip {name}: {type(e).__name__}: {e}", file=sys.stderr)
    manifest = {
        "description": "diffusers scheduler references (SD1.5 scheduler_config) written by tools/diffusers-scheduler-refs.py",
        "generator": f"diffusers scheduler sources, torch {torch.__version__}, CPU",
        "torch_version": torch.__version__,
        "sd15_scheduler_config": SD15,
        "pinned_to_0_27": PIN_0_27,
        "fake_model": "eps = 0.1 * model_input * cos(float(t) / 100), model_input = scale_model_input(x, t) (float32)",
        "initial_latent": "initial_noise = torch.randn(1,4,4,4, generator=Generator().manual_seed(0)); x_T = initial_noise * init_noise_sigma",
        "step_generator": "torch.Generator('cpu').manual_seed(1234), passed as generator= to step(); every randn_tensor draw is logged per step as 'noise'; DPMSolverSDE's Brownian-tree sampler is replaced by standard normal draws from Generator().manual_seed(4321), logged the same way",
        "runs": manifest_runs,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{len(manifest_runs)} runs written to {out_dir}")


if __name__ == "__main__":
    main()
