"""Reference parameter trajectories for torch.optim.AdamW / SGD (PyTorch 1.13 single-tensor
update order), float64, on loss = sum(c * (p - t)^2). Written from the documented algorithms;
the C++ test also compares against libtorch's own torch::optim live. Regenerate with
`python3 tests/abi/reference/optim_reference.py > tests/abi/reference/optim_reference.txt`."""
import math

P0 = [0.5, -1.25, 2.0]
T = [1.0, 0.5, -0.75]
C = [1.0, 3.0, 0.25]
LR = 0.05
STEPS = 6

def grad(p): return [2 * c * (x - t) for x, t, c in zip(p, T, C)]

def adamw(beta1=0.9, beta2=0.999, eps=1e-8, wd=0.01):
    p = list(P0); m = [0.0] * 3; v = [0.0] * 3; out = []
    for step in range(1, STEPS + 1):
        g = grad(p)
        for i in range(3):
            p[i] = p[i] * (1 - LR * wd)
            m[i] = m[i] * beta1 + g[i] * (1 - beta1)
            v[i] = v[i] * beta2 + g[i] * g[i] * (1 - beta2)
            bc1 = 1 - beta1 ** step; bc2 = 1 - beta2 ** step
            denom = math.sqrt(v[i]) / math.sqrt(bc2) + eps
            p[i] = p[i] + (-LR / bc1) * (m[i] / denom)
        out.append(list(p))
    return out

def sgd(momentum=0.9, dampening=0.0, wd=0.001, nesterov=True):
    p = list(P0); buf = None; out = []
    for step in range(STEPS):
        g = grad(p)
        d = [g[i] + wd * p[i] for i in range(3)]
        if buf is None: buf = list(d)
        else: buf = [buf[i] * momentum + d[i] * (1 - dampening) for i in range(3)]
        d = [d[i] + momentum * buf[i] for i in range(3)] if nesterov else list(buf)
        p = [p[i] - LR * d[i] for i in range(3)]
        out.append(list(p))
    return out

for name, traj in [("adamw", adamw()), ("sgd_nesterov", sgd())]:
    for k, p in enumerate(traj):
        print(name, k + 1, " ".join(repr(x) for x in p))
