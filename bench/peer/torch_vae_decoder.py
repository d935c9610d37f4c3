"""Time SD's VAE decoder (AutoencoderKL decoder shapes: 4 -> 512,512,256,128 -> 3) in PyTorch on CPU.
Written for the peer comparison from the published architecture (random weights), float32, no_grad,
attention as diffusers 0.19 runs it on torch 1.x (baddbmm + softmax + bmm, one head).
usage: /usr/bin/python3 bench/peer/torch_vae_decoder.py RES [NTIMED]   (prints one JSON line)"""
import json, sys, time, statistics
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)


class Res(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(32, cin, eps=1e-6), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(32, cout, eps=1e-6), nn.Conv2d(cout, cout, 3, padding=1)
        self.sc = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return (self.sc(x) if self.sc is not None else x) + h


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n = nn.GroupNorm(32, c, eps=1e-6)
        self.q, self.k, self.v, self.o = (nn.Linear(c, c) for _ in range(4))
        self.scale = c ** -0.5

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.n(x).view(b, c, h * w).transpose(1, 2)
        q, k, v = self.q(t), self.k(t), self.v(t)
        s = torch.baddbmm(torch.empty(b, h * w, h * w), q, k.transpose(1, 2), beta=0, alpha=self.scale)
        o = self.o(torch.bmm(s.softmax(dim=-1), v))
        return x + o.transpose(1, 2).reshape(b, c, h, w)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.pq = nn.Conv2d(4, 4, 1)
        self.cin = nn.Conv2d(4, 512, 3, padding=1)
        self.mid = nn.ModuleList([Res(512, 512), Attn(512), Res(512, 512)])
        chans = [512, 512, 256, 128]
        self.ups = nn.ModuleList()
        prev = 512
        for i, c in enumerate(chans):
            blocks = nn.ModuleList([Res(prev if j == 0 else c, c) for j in range(3)])
            up = nn.Conv2d(c, c, 3, padding=1) if i < 3 else None
            self.ups.append(nn.ModuleList([blocks, up] if up is not None else [blocks]))
            prev = c
        self.nout, self.cout = nn.GroupNorm(32, 128, eps=1e-6), nn.Conv2d(128, 3, 3, padding=1)

    def forward(self, z):
        x = self.cin(self.pq(z / 0.18215))
        for m in self.mid:
            x = m(x)
        for blk in self.ups:
            for r in blk[0]:
                x = r(x)
            if len(blk) > 1:
                x = blk[1](F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.cout(F.silu(self.nout(x)))


res = int(sys.argv[1])
ntimed = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.manual_seed(0)
dec = Decoder().float().eval()
z = torch.randn(1, 4, res // 8, res // 8, generator=torch.Generator().manual_seed(1))
times = []
with torch.no_grad():
    for i in range(ntimed + 1):
        t0 = time.perf_counter()
        img = dec(z)
        times.append(time.perf_counter() - t0)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps(dict(
    what="vae_decoder", res=res, torch=torch.__version__, threads=torch.get_num_threads(),
    params=sum(p.numel() for p in dec.parameters()), first_s=round(times[0], 2), timed_s=[round(t, 2) for t in times[1:]],
    median_s=round(statistics.median(times[1:]), 2), peak_rss_gb=round(int(hwm) / 1024 / 1024, 2), out_shape=list(img.shape),
)))
