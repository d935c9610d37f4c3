"""Shared pieces of the PyTorch peer scripts (torch_unet.py, torch_hires.py).

The peer is "the same recipe in PyTorch": Debian's torch 1.13 (CPU), diffusers 0.27.2's
UNet2DConditionModel / AutoencoderKL built from the published configs with random weights,
float32, no_grad, tomesd 0.1.3 for token merging. See bench/peer/README.md for the set-up.

Every script runs its work in a child process (the same script, re-executed with
PEER_CHILD=1). The child streams one JSON object per line on stdout (events: "info",
"call", "result", "error"); the parent prints one final JSON document. The point of the
split is memory: if the kernel's OOM killer ends the child, the parent still reports what
was measured so far and the child's peak RSS (getrusage(RUSAGE_CHILDREN) covers children
killed by a signal).
"""
import json
import os
import resource
import subprocess
import sys
import time

# UNet configs as published with the checkpoints (unet/config.json of
# runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0), limited to the
# keys whose values differ from UNet2DConditionModel's defaults in diffusers 0.27.2 or define
# the architecture. In diffusers' naming, attention_head_dim is the number of heads for SDXL
# (5/10/20 heads of 64 channels) and the head width for SD 1.5 (8 heads of 40/80/160).
UNET_CONFIGS = {
    "sd15": dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=768,
        norm_num_groups=32,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    ),
    "sdxl": dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    ),
}

# Text-encoder output widths the UNet is conditioned on: CLIP ViT-L (SD 1.5); CLIP ViT-L + OpenCLIP
# ViT-bigG concatenated (SDXL), plus bigG's pooled output (1280) and 6 time ids for SDXL.
TEXT_LEN = 77
POOLED_DIM = {"sdxl": 1280}
TIME_IDS = 6

# AutoencoderKL configs (vae/config.json of both checkpoints; the same architecture, only the
# latent scaling factor differs).
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    act_fn="silu",
)
VAE_SCALING = {"sd15": 0.18215, "sdxl": 0.13025}


def peak_rss_gb(who=resource.RUSAGE_SELF):
    # ru_maxrss is in KiB on Linux
    return round(resource.getrusage(who).ru_maxrss / 1024 / 1024, 3)


def emit(event, **fields):
    """Child side: one JSON line on stdout, flushed so the parent sees it even if we are killed next."""
    fields["event"] = event
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def import_stack():
    """Import torch, diffusers' model classes and tomesd; one clear line if the set-up is missing."""
    try:
        import torch
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
        import diffusers
        import tomesd
    except ImportError as e:
        sys.stderr.write(
            f"peer set-up missing ({e}); run with /usr/bin/python3 and PYTHONPATH as in bench/peer/README.md\n"
        )
        sys.exit(2)
    return torch, diffusers, UNet2DConditionModel, AutoencoderKL, tomesd


def loaded_blas():
    """The BLAS/LAPACK shared objects actually mapped into this process (reference BLAS is ~10x
    slower than OpenBLAS for the UNet's linear layers, so the timings depend on it)."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if any(k in path for k in ("blas", "lapack", "blis", "mkl_rt", "libgomp")):
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(libs)


def versions(torch, diffusers, tomesd):
    import importlib.metadata as md

    try:
        tomesd_version = md.version("tomesd")
    except md.PackageNotFoundError:
        # a source checkout on PYTHONPATH: read the version its setup.py declares
        tomesd_version = "source tree (version unknown)"
        setup = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(tomesd.__file__))), "setup.py")
        try:
            import re

            m = re.search(r'version\s*=\s*"([^"]+)"', open(setup).read())
            if m:
                tomesd_version = m.group(1) + " (source tree)"
        except OSError:
            pass
    return dict(
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        tomesd=tomesd_version,
        python=sys.version.split()[0],
        threads=torch.get_num_threads(),
        env_threads={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        blas_libraries=loaded_blas(),
        blas_is_reference=any("/blas/libblas" in x for x in loaded_blas()),
    )


def build_unet(torch, UNet2DConditionModel, name, seed=0):
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**UNET_CONFIGS[name]).float().eval()
    unet.requires_grad_(False)
    build_s = time.perf_counter() - t0
    return unet, build_s, sum(p.numel() for p in unet.parameters())


def build_vae(torch, AutoencoderKL, name, seed=1):
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    vae = AutoencoderKL(**VAE_CONFIG, scaling_factor=VAE_SCALING[name]).float().eval()
    vae.requires_grad_(False)
    # Only the decoder runs in text-to-image; the encoder is dropped to keep RSS to what a
    # pipeline touches (its 34 M parameters would otherwise sit in memory unused).
    vae.encoder = None
    vae.quant_conv = None
    build_s = time.perf_counter() - t0
    return vae, build_s, sum(p.numel() for p in vae.parameters())


def unet_inputs(torch, name, batch, size, gen):
    """Random conditioning of the right shapes for one UNet call at `size` pixels."""
    lat = size // 8
    cond = dict(
        encoder_hidden_states=torch.randn(
            batch, TEXT_LEN, UNET_CONFIGS[name]["cross_attention_dim"], generator=gen
        )
    )
    if name == "sdxl":
        # time ids: original size, crop top-left, target size (as SDXL's pipeline builds them)
        tid = torch.tensor([size, size, 0, 0, size, size], dtype=torch.float32).repeat(batch, 1)
        cond["added_cond_kwargs"] = dict(text_embeds=torch.randn(batch, POOLED_DIM[name], generator=gen), time_ids=tid)
    sample = torch.randn(batch, 4, lat, lat, generator=gen)
    return sample, cond


class ToMeCounter:
    """Counts what tomesd actually merges, by wrapping tomesd.patch.compute_merge.

    ToMeBlock.forward (tomesd 0.1.3, diffusers variant) looks compute_merge up in
    tomesd.patch's globals on every call, so the wrapper sees every patched block call; each
    call is one BasicTransformerBlock. A block merges when its downsample level is within
    max_downsample; then tomesd removes r = min(int(N * ratio), N - dst) of its N tokens for
    self-attention (dst = one token per sx x sy cell), as bipartite_soft_matching_random2d does.
    """

    def __init__(self, tomesd_patch, tomesd_merge):
        self.patch = tomesd_patch
        self.merge = tomesd_merge
        self.orig = tomesd_patch.compute_merge
        self.reset()
        tomesd_patch.compute_merge = self._wrapped

    def reset(self):
        self.block_calls = 0
        self.merged_calls = 0
        self.tokens_in = 0
        self.tokens_self_attn = 0
        self.by_tokens = {}

    def _wrapped(self, x, tome_info):
        out = self.orig(x, tome_info)
        m_a = out[0]
        n = x.shape[1]
        self.block_calls += 1
        self.tokens_in += n
        merged = m_a is not self.merge.do_nothing
        kept = n
        if merged:
            args = tome_info["args"]
            h0, w0 = tome_info["size"]
            import math

            ds = int(math.ceil(math.sqrt(h0 * w0 // n)))
            h, w = int(math.ceil(h0 / ds)), int(math.ceil(w0 / ds))
            dst = (h // args["sy"]) * (w // args["sx"])
            r = min(int(n * args["ratio"]), n - dst)
            kept = n - max(r, 0)
            if r > 0:
                self.merged_calls += 1
        self.tokens_self_attn += kept
        key = str(n)
        entry = self.by_tokens.setdefault(key, dict(block_calls=0, merged=0, self_attn_tokens=kept))
        entry["block_calls"] += 1
        entry["merged"] += 1 if kept < n else 0
        return out

    def snapshot(self):
        return dict(
            block_calls=self.block_calls,
            merged_block_calls=self.merged_calls,
            tokens_in=self.tokens_in,
            self_attn_tokens_after_merge=self.tokens_self_attn,
            by_token_count=self.by_tokens,
        )


def apply_tome(tomesd, unet, ratio, max_downsample):
    """tomesd.apply_patch with sx = sy = 2 and tomesd's other defaults (use_rand, self-attention only)."""
    tomesd.apply_patch(unet, ratio=ratio, max_downsample=max_downsample, sx=2, sy=2)
    patched = sum(1 for m in unet.modules() if type(m).__name__ == "ToMeBlock")
    return patched


def supervise(script_path, argv, describe):
    """Parent side: run the script as a child, collect its events, print one JSON document.

    `describe` is a dict of the configuration, copied into the output even if the child dies
    before reporting it. Exit status: the child's (or 1 if it was killed by a signal).
    """
    env = dict(os.environ, PEER_CHILD="1")
    # Debian's torch calls BLAS through libblas.so.3 (OpenBLAS via update-alternatives); pin its
    # threads and OpenMP's to the torch thread count so that all three use the same cores.
    threads = str(describe.get("threads", 2))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, threads)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, script_path] + argv, stdout=subprocess.PIPE, env=env, text=True)
    events = []
    for line in proc.stdout:
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            sys.stderr.write(line + "\n")
            continue
        events.append(ev)
        if ev.get("event") == "call":
            sys.stderr.write(
                f"  {ev.get('phase', 'call')} {ev.get('index')}: {ev.get('seconds'):.2f} s\n"
            )
    rc = proc.wait()
    wall = time.perf_counter() - t0
    result = next((e for e in reversed(events) if e.get("event") == "result"), None)
    doc = dict(describe)
    if result is not None:
        doc.update({k: v for k, v in result.items() if k != "event"})
        doc["status"] = "ok" if rc == 0 else f"exit {rc}"
    else:
        err = next((e for e in reversed(events) if e.get("event") == "error"), None)
        if rc < 0:
            doc["status"] = f"killed by signal {-rc}" + (" (likely the OOM killer)" if rc == -9 else "")
        else:
            doc["status"] = f"failed (exit {rc})"
        if err is not None:
            doc["error"] = err.get("message")
        for e in events:
            if e.get("event") == "info":
                doc.update({k: v for k, v in e.items() if k != "event"})
        doc["partial_calls"] = [
            {k: v for k, v in e.items() if k != "event"} for e in events if e.get("event") == "call"
        ]
    # the child's own ru_maxrss when it got to report it; the parent's view covers a killed child
    doc["peak_rss_gb_child_reported"] = doc.pop("peak_rss_gb", None)
    doc["peak_rss_gb"] = peak_rss_gb(resource.RUSAGE_CHILDREN)
    doc["process_wall_s"] = round(wall, 2)
    print(json.dumps(doc, indent=1))
    return 0 if rc == 0 else (rc if rc > 0 else 1)


def child_guard(fn):
    """Child side: report Python-level failures (e.g. torch's allocation errors) as an event."""
    try:
        fn()
    except MemoryError as e:
        emit("error", message=f"MemoryError: {e}", peak_rss_gb=peak_rss_gb())
        sys.exit(3)
    except RuntimeError as e:
        emit("error", message=f"RuntimeError: {str(e).splitlines()[0] if str(e) else ''}", peak_rss_gb=peak_rss_gb())
        sys.exit(3)
