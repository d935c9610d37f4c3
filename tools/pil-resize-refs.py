"""Reference resizes for src/image/pil-resize.ts, written by Pillow itself.

Run with any Pillow (the checked-in set was made with Debian bookworm's python3-pil 9.4.0):
    python3 tools/pil-resize-refs.py test/fixtures/pil-resize
Writes the source pictures and Image.resize outputs as raw u8 files plus manifest.json.
"""
import json, os, sys
from PIL import Image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

def source(w, h, mode):
    # a deterministic picture with edges, gradients and noise-like texture
    ch = len(mode)
    data = bytearray()
    for y in range(h):
        for x in range(w):
            for c in range(ch):
                v = (x * 37 + y * 91 + c * 53 + (x * y) % 29 * 7) % 256
                if (x // 5 + y // 4) % 3 == 0:
                    v = 255 - v
                if mode == 'RGBA' and c == 3:
                    v = [0, 255, 128, 17, 240][(x + 2 * y) % 5]
                data.append(v)
    return Image.frombytes(mode, (w, h), bytes(data))

FILTERS = {'lanczos': Image.LANCZOS, 'nearest': Image.NEAREST, 'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR}
cases = []
srcs = {}
def case(mode, w, h, ow, oh, flt):
    key = f'{mode}_{w}x{h}'
    if key not in srcs:
        img = source(w, h, mode)
        fn = f'src_{key}.u8'
        with open(os.path.join(out, fn), 'wb') as f:
            f.write(img.tobytes())
        srcs[key] = fn
    res = source(w, h, mode).resize((ow, oh), FILTERS[flt])
    assert res.mode == mode
    fn = f'{key}_to_{ow}x{oh}_{flt}.u8'
    with open(os.path.join(out, fn), 'wb') as f:
        f.write(res.tobytes())
    cases.append({'mode': mode, 'channels': len(mode), 'width': w, 'height': h, 'out_width': ow, 'out_height': oh,
                  'filter': flt, 'source': srcs[key], 'file': fn})

for (ow, oh) in [(74, 58), (64, 48), (16, 20), (100, 13), (37, 61), (111, 87)]:
    for flt in ['lanczos', 'nearest', 'bicubic', 'bilinear']:
        case('RGB', 37, 29, ow, oh, flt)
for (ow, oh) in [(64, 64), (24, 40)]:
    case('L', 32, 32, ow, oh, 'lanczos')
    case('RGBA', 32, 32, ow, oh, 'lanczos')
    case('RGBA', 32, 32, ow, oh, 'nearest')
import PIL
with open(os.path.join(out, 'manifest.json'), 'w') as f:
    json.dump({'about': {'generator': 'tools/pil-resize-refs.py', 'pillow': PIL.__version__,
                         'call': 'Image.resize((out_width, out_height), filter) on the source picture (raw bytes, mode as given)'},
               'cases': cases}, f, indent=1)
print(len(cases), 'cases')
