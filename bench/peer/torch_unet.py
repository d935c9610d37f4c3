"""Time diffusers' UNet2DConditionModel (SD 1.5 or SDXL base config, random weights, float32)
on CPU in torch 1.13, optionally with tomesd 0.1.3 token merging.

usage: /usr/bin/python3 bench/peer/torch_unet.py --model sd15|sdxl --size S --batch B
           [--tome R --max-downsample N] [--calls N] [--warmup 0|1] [--threads 2]
           [--check-patch-equivalence]
(PYTHONPATH as in bench/peer/README.md). Prints one JSON document: per-call seconds, peak RSS,
and what tomesd merged (block calls seen by the patched forward, tokens before/after merging).

With --tome R > 0 the script fails unless the patched blocks ran and at least one merged: a
tomesd/diffusers version mismatch would otherwise silently time the unmerged model.
--check-patch-equivalence (small sizes only) also checks, before timing, that tomesd's
replacement forward with merging disabled (max_downsample 0) gives the same output as
diffusers' own BasicTransformerBlock.forward, i.e. that tomesd 0.1.3 (written for older
diffusers) still computes the same block on this diffusers version.
"""
import argparse
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
    p.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size / 8)")
    p.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one image with guidance)")
    p.add_argument("--tome", type=float, default=0.0, help="tomesd ratio; 0 = no patch")
    p.add_argument("--max-downsample", type=int, default=1, help="tomesd max_downsample (1, 2, 4, 8)")
    p.add_argument("--calls", type=int, default=2, help="timed UNet calls")
    p.add_argument("--warmup", type=int, choices=(0, 1), default=1, help="one untimed call first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-patch-equivalence", action="store_true")
    a = p.parse_args(argv)
    if a.size % 8:
        p.error("--size must be a multiple of 8")
    if not 0 <= a.tome < 1:
        p.error("--tome must be in [0, 1)")
    return a


def child(a):
    torch, diffusers, UNet, _, tomesd = pc.import_stack()
    import tomesd.patch
    import tomesd.merge

    torch.set_num_threads(a.threads)
    info = pc.versions(torch, diffusers, tomesd)
    unet, build_s, params = pc.build_unet(torch, UNet, a.model, a.seed)
    info.update(params=params, build_s=round(build_s, 2), attention_processor=type(
        next(m for m in unet.modules() if type(m).__name__ == "Attention").processor).__name__)
    pc.emit("info", **info)

    gen = torch.Generator().manual_seed(a.seed + 1)
    sample, cond = pc.unet_inputs(torch, a.model, a.batch, a.size, gen)
    t = torch.tensor(999.0)
    counter = pc.ToMeCounter(tomesd.patch, tomesd.merge)

    equivalence = None
    with torch.no_grad():
        if a.check_patch_equivalence:
            ref = unet(sample, t, **cond).sample
            pc.apply_tome(tomesd, unet, ratio=0.5, max_downsample=0)  # patched forward, nothing merged
            got = unet(sample, t, **cond).sample
            tomesd.remove_patch(unet)
            scale = ref.abs().max().item()
            equivalence = dict(
                block_calls=counter.block_calls,
                max_abs_diff=(got - ref).abs().max().item(),
                ref_max_abs=scale,
                ok=bool(counter.block_calls > 0 and torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * max(scale, 1.0))),
            )
            counter.reset()
            if not equivalence["ok"]:
                pc.emit("error", message=f"tomesd's patched forward differs from diffusers': {equivalence}")
                sys.exit(4)

        patched = 0
        if a.tome > 0:
            patched = pc.apply_tome(tomesd, unet, a.tome, a.max_downsample)

        warmup_s = None
        if a.warmup:
            t0 = time.perf_counter()
            unet(sample, t, **cond)
            warmup_s = time.perf_counter() - t0
            pc.emit("call", phase="warmup", index=0, seconds=warmup_s)
        tome_warmup = counter.snapshot()
        counter.reset()

        times = []
        for i in range(a.calls):
            t0 = time.perf_counter()
            out = unet(sample, t, **cond).sample
            times.append(time.perf_counter() - t0)
            pc.emit("call", phase="timed", index=i, seconds=times[-1])
        tome_stats = counter.snapshot()

    if a.tome > 0:
        seen = tome_stats if a.calls else tome_warmup
        if patched == 0 or seen["block_calls"] == 0 or seen["merged_block_calls"] == 0:
            pc.emit("error", message=f"tomesd did not merge: {patched} blocks patched, stats {seen}")
            sys.exit(4)

    pc.emit(
        "result",
        **info,
        warmup_s=None if warmup_s is None else round(warmup_s, 3),
        per_call_s=[round(x, 3) for x in times],
        mean_s=round(statistics.mean(times), 3) if times else None,
        median_s=round(statistics.median(times), 3) if times else None,
        tome_blocks_patched=patched,
        tome_per_call=(
            {k: (v // a.calls if isinstance(v, int) else v) for k, v in tome_stats.items() if k != "by_token_count"}
            if a.calls else None
        ),
        tome_by_token_count_all_timed_calls=tome_stats["by_token_count"] if a.tome > 0 else None,
        patch_equivalence=equivalence,
        out_shape=list(out.shape) if times else None,
        out_finite=bool(torch.isfinite(out).all()) if times else None,
        peak_rss_gb=pc.peak_rss_gb(),
    )


def main():
    argv = sys.argv[1:]
    a = parse(argv)
    if os.environ.get("PEER_CHILD") == "1":
        pc.child_guard(lambda: child(a))
        return 0
    describe = dict(
        what="unet", model=a.model, size=a.size, latent=a.size // 8, batch=a.batch, tome=a.tome,
        max_downsample=a.max_downsample if a.tome > 0 else None, threads=a.threads, sx=2 if a.tome > 0 else None,
        sy=2 if a.tome > 0 else None, warmup=a.warmup, calls=a.calls, dtype="float32", no_grad=True,
    )
    return pc.supervise(os.path.abspath(__file__), argv, describe)


if __name__ == "__main__":
    sys.exit(main())
