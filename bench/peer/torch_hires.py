"""Time the hires-fix recipe (A1111's "Hires. fix" with the Latent upscaler, as diffusers users
write it) in PyTorch on CPU: torch 1.13, diffusers 0.27.2 models with random weights, float32,
no_grad, tomesd 0.1.3 on the second pass.

  pass 1: N1 UNet calls at the low size, classifier-free guidance (batch 2), no ToMe;
  latent upscale: bilinear (F.interpolate, align_corners=False, no antialias), low -> high;
  re-noise to the pass-2 start (denoising strength, A1111's default 0.7);
  pass 2: N2 UNet calls at the high size with guidance, tomesd.apply_patch(ratio, max_downsample,
          sx = sy = 2) applied just before it;
  decode: AutoencoderKL's decoder at the high size (batch 1).

A1111 applies ToMe only above a minimum size, tomesd has no such notion: here the patch is
simply applied for pass 2 and not for pass 1. The sampler is an Euler step on SD's
scaled-linear schedule (elementwise work, negligible next to the UNet); with an explicit
hires step count A1111 runs exactly N2 UNet evaluations in pass 2.

To keep CPU runs short, --time-calls K runs only the first K calls of each pass; each pass is
then extrapolated as first + (N - 1) x median(rest) (K >= 2; the first call carries one-time
costs of the new shapes) or N x first (K = 1), and the recipe total as pass 1 + upscale +
re-noise + pass 2 + decode.

usage: /usr/bin/python3 bench/peer/torch_hires.py [--model sd15|sdxl] [--low 512 --high 1024]
           [--steps1 20 --steps2 10] [--tome 0.5 --max-downsample 1] [--time-calls K]
           [--guidance 7.5] [--strength 0.7] [--warmup 0|1] [--decode 0|1] [--threads 2]
Prints one JSON document (see bench/peer/README.md).
"""
import argparse
import math
import os
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ inside the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(pc.UNET_CONFIGS), default="sd15")
    p.add_argument("--low", type=int, default=512, help="pass-1 image size in pixels")
    p.add_argument("--high", type=int, default=1024, help="pass-2 image size in pixels")
    p.add_argument("--steps1", type=int, default=20, help="pass-1 UNet calls (N1)")
    p.add_argument("--steps2", type=int, default=10, help="pass-2 UNet calls (N2)")
    p.add_argument("--tome", type=float, default=0.5, help="tomesd ratio for pass 2; 0 = no patch")
    p.add_argument("--max-downsample", type=int, default=1)
    p.add_argument("--time-calls", type=int, default=0, help="run only the first K calls of each pass (0 = all)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--strength", type=float, default=0.7, help="pass-2 denoising strength")
    p.add_argument("--warmup", type=int, choices=(0, 1), default=0,
                   help="one untimed UNet call at each pass's size first (a pipeline has none)")
    p.add_argument("--decode", type=int, choices=(0, 1), default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.low % 8 or a.high % 8:
        p.error("--low and --high must be multiples of 8")
    if a.high < a.low:
        p.error("--high must be at least --low")
    if a.steps1 < 1 or a.steps2 < 1 or a.time_calls < 0:
        p.error("--steps1/--steps2 must be >= 1 and --time-calls >= 0")
    if not 0 <= a.tome < 1 or not 0 < a.strength <= 1:
        p.error("--tome must be in [0, 1) and --strength in (0, 1]")
    return a


def sd_sigmas(torch):
    """sigma(t) for t = 0..999 of SD's scaled-linear betas (0.00085 .. 0.012), as diffusers'
    EulerDiscreteScheduler derives them."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - ac) / ac).sqrt()


def schedule(torch, sig_all, n, t_start):
    """n timesteps from t_start down to 0 (linspace spacing) and their sigmas, plus a final 0."""
    ts = torch.linspace(t_start, 0, n, dtype=torch.float64)
    log_sig = sig_all.log()
    lo = ts.floor().long()
    hi = ts.ceil().long()
    w = ts - lo
    sig = ((1 - w) * log_sig[lo] + w * log_sig[hi]).exp()
    return ts.float(), torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).float()


def extrapolate(times, n):
    if not times:
        return None
    if len(times) == 1:
        return times[0] * n
    return times[0] + (n - 1) * statistics.median(times[1:])


def child(a):
    torch, diffusers, UNet, AutoencoderKL, tomesd = pc.import_stack()
    import tomesd.patch
    import tomesd.merge
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    info = pc.versions(torch, diffusers, tomesd)
    unet, unet_build_s, unet_params = pc.build_unet(torch, UNet, a.model, a.seed)
    vae = None
    info.update(unet_params=unet_params, unet_build_s=round(unet_build_s, 2))
    if a.decode:
        vae, vae_build_s, vae_params = pc.build_vae(torch, AutoencoderKL, a.model, a.seed + 1)
        info.update(vae_decoder_params=vae_params, vae_build_s=round(vae_build_s, 2))
    pc.emit("info", **info)

    gen = torch.Generator().manual_seed(a.seed + 2)
    counter = pc.ToMeCounter(tomesd.patch, tomesd.merge)
    sig_all = sd_sigmas(torch)
    k1 = a.steps1 if a.time_calls == 0 else min(a.time_calls, a.steps1)
    k2 = a.steps2 if a.time_calls == 0 else min(a.time_calls, a.steps2)
    phases = {}

    def run_pass(name, size, n, k, t_start, x):
        _, cond = pc.unet_inputs(torch, a.model, 2, size, gen)  # [uncond, cond] rows
        ts, sig = schedule(torch, sig_all, n, t_start)
        warm_s = None
        if a.warmup:
            t0 = time.perf_counter()
            unet(torch.cat([x, x]), ts[0], **cond)
            warm_s = time.perf_counter() - t0
            pc.emit("call", phase=f"{name}-warmup", index=0, seconds=warm_s)
        times = []
        for i in range(k):
            t0 = time.perf_counter()
            inp = x / (sig[i] ** 2 + 1) ** 0.5
            eps = unet(torch.cat([inp, inp]), ts[i], **cond).sample
            e_u, e_c = eps.chunk(2)
            eps = e_u + a.guidance * (e_c - e_u)
            x = x + (sig[i + 1] - sig[i]) * eps  # Euler step
            times.append(time.perf_counter() - t0)
            pc.emit("call", phase=name, index=i, seconds=times[-1])
        est = extrapolate(times, n)
        phases[name] = dict(
            size=size, latent=size // 8, batch=2, calls_recipe=n, calls_run=k,
            warmup_s=None if warm_s is None else round(warm_s, 3),
            per_call_s=[round(t, 3) for t in times],
            median_s=round(statistics.median(times), 3),
            estimate_s=round(est, 2),
            peak_rss_gb_after=pc.peak_rss_gb(),
        )
        return x

    with torch.no_grad():
        lat1 = a.low // 8
        x = torch.randn(1, 4, lat1, lat1, generator=gen) * float(sig_all[-1])
        x = run_pass("pass1", a.low, a.steps1, k1, 999.0, x)

        t0 = time.perf_counter()
        lat2 = a.high // 8
        x = F.interpolate(x, size=(lat2, lat2), mode="bilinear", align_corners=False)
        upscale_s = time.perf_counter() - t0

        t_start2 = min(999.0, a.strength * 1000.0)
        t0 = time.perf_counter()
        _, sig2 = schedule(torch, sig_all, a.steps2, t_start2)
        x = x + torch.randn(x.shape, generator=gen) * sig2[0]
        renoise_s = time.perf_counter() - t0

        patched = 0
        if a.tome > 0:
            patched = pc.apply_tome(tomesd, unet, a.tome, a.max_downsample)
        counter.reset()
        x = run_pass("pass2", a.high, a.steps2, k2, t_start2, x)
        tome_stats = counter.snapshot()
        if a.tome > 0 and (patched == 0 or tome_stats["merged_block_calls"] == 0):
            pc.emit("error", message=f"tomesd did not merge in pass 2: {patched} blocks patched, stats {tome_stats}")
            sys.exit(4)

        decode = None
        if vae is not None:
            if a.tome > 0:
                tomesd.remove_patch(unet)
            t0 = time.perf_counter()
            img = vae.decode(x / vae.config.scaling_factor).sample
            decode_s = time.perf_counter() - t0
            pc.emit("call", phase="decode", index=0, seconds=decode_s)
            decode = dict(size=a.high, seconds=round(decode_s, 3), out_shape=list(img.shape),
                          peak_rss_gb_after=pc.peak_rss_gb())

    calls_per_pass2 = tome_stats["block_calls"] // max(k2, 1)
    total = phases["pass1"]["estimate_s"] + upscale_s + renoise_s + phases["pass2"]["estimate_s"]
    if decode is not None:
        total += decode["seconds"]
    pc.emit(
        "result",
        **info,
        pass1=phases["pass1"],
        upscale=dict(mode="bilinear", align_corners=False, from_latent=a.low // 8, to_latent=a.high // 8,
                     seconds=round(upscale_s, 4)),
        renoise=dict(strength=a.strength, t_start=t_start2, seconds=round(renoise_s, 4)),
        pass2=dict(phases["pass2"], tome_blocks_patched=patched,
                   tome_block_calls_per_unet_call=calls_per_pass2,
                   tome_merged_block_calls_per_unet_call=tome_stats["merged_block_calls"] // max(k2, 1),
                   tome_by_token_count_all_calls=tome_stats["by_token_count"] if a.tome > 0 else None),
        decode=decode,
        total_estimate_s=round(total, 2),
        extrapolated=bool(k1 < a.steps1 or k2 < a.steps2),
        latent_finite=bool(torch.isfinite(x).all()),
        peak_rss_gb=pc.peak_rss_gb(),
    )


def main():
    argv = sys.argv[1:]
    a = parse(argv)
    if os.environ.get("PEER_CHILD") == "1":
        pc.child_guard(lambda: child(a))
        return 0
    describe = dict(
        what="hires", model=a.model, low=a.low, high=a.high, steps1=a.steps1, steps2=a.steps2,
        tome_pass2=a.tome, max_downsample=a.max_downsample if a.tome > 0 else None,
        sx=2 if a.tome > 0 else None, sy=2 if a.tome > 0 else None, time_calls=a.time_calls,
        guidance=a.guidance, strength=a.strength, warmup=a.warmup, decode_enabled=bool(a.decode), threads=a.threads,
        dtype="float32", no_grad=True,
    )
    return pc.supervise(os.path.abspath(__file__), argv, describe)


if __name__ == "__main__":
    sys.exit(main())
