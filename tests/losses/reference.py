"""Independent numpy implementations of each paper's loss, written from the papers' formulas
and reference code (explicit matrices and loops, none of mmie's machinery), plus a central
finite-difference gradient to check JAX's gradients against."""

import math

import numpy as np


def log_softmax(x, axis=-1):
  m = x.max(axis=axis, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def logsumexp(x, axis=-1):
  m = x.max(axis=axis, keepdims=True)
  return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numeric_grad(f, x, h=1e-6):
  """Central differences of scalar ``f`` at ``x`` (float64)."""
  x = np.array(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    old = x[idx]
    x[idx] = old + h
    up = f(x)
    x[idx] = old - h
    down = f(x)
    x[idx] = old
    g[idx] = (up - down) / (2 * h)
  return g


def clip(img, txt, scale, eps=0.0, txt_extra=None, img_extra=None):
  """Radford et al. 2021; extra rows are additional negative candidates per direction."""
  b = img.shape[0]
  t_c = txt if txt_extra is None else np.concatenate([txt, txt_extra])
  i_c = img if img_extra is None else np.concatenate([img, img_extra])

  def direction(anchors, cands):
    logp = log_softmax(scale * anchors @ cands.T, 1)
    target = np.zeros_like(logp)
    target[np.arange(b), np.arange(b)] = 1.0
    target = (1 - eps) * target + eps / cands.shape[0]
    return -(target * logp).sum(1).mean()

  return 0.5 * (direction(img, t_c) + direction(txt, i_c))


def siglip(img, txt, scale, bias):
  """Zhai et al. 2023: -1/B sum_ij log sigmoid(z_ij (t x.y + b))."""
  logits = scale * img @ txt.T + bias
  z = 2 * np.eye(img.shape[0]) - 1
  return np.logaddexp(0, -z * logits).sum() / img.shape[0]


def ntxent(za, zb, tau):
  """Chen et al. 2020 NT-Xent over 2N normalised views."""
  z = normalize(np.concatenate([za, zb]))
  n2 = z.shape[0]
  sim = z @ z.T / tau
  total = 0.0
  for i in range(n2):
    j = (i + n2 // 2) % n2
    others = [k for k in range(n2) if k != i]
    total += -sim[i, j] + logsumexp(sim[i, others], 0)
  return total / n2


def _dcl_direction(z1, z2, tau, weight=None):
  """Yeh et al. 2022 reference DCL (one direction), positive and self masked out."""
  cross = z1 @ z2.T
  pos = -np.diag(cross) / tau
  if weight is not None:
    pos = pos * weight
  neg_sim = np.concatenate([z1 @ z1.T, cross], axis=1) / tau
  mask = np.tile(np.eye(z1.shape[0], dtype=bool), (1, 2))
  neg_sim = np.where(mask, -np.inf, neg_sim)
  return (pos + logsumexp(neg_sim, 1)).mean()


def dcl(za, zb, tau, sigma=None):
  z1, z2 = normalize(za), normalize(zb)
  weight = None
  if sigma is not None:
    p = np.sum(z1 * z2, 1) / sigma
    weight = 2 - z1.shape[0] * np.exp(p - logsumexp(p, 0))
  return 0.5 * (_dcl_direction(z1, z2, tau, weight) + _dcl_direction(z2, z1, tau, weight))


def supcon(features, labels, tau):
  """Khosla et al. 2020 L_out, as the reference SupConLoss (contrast_mode='all')."""
  b, v, _ = features.shape
  contrast = np.concatenate([features[:, i] for i in range(v)])  # view-major like torch.unbind
  lab = np.tile(labels, v)
  logits = contrast @ contrast.T / tau
  self_mask = np.eye(b * v, dtype=bool)
  mask = (lab[:, None] == lab[None, :]) & ~self_mask
  log_prob = logits - logsumexp(np.where(self_mask, -np.inf, logits), 1)[:, None]
  pos_count = mask.sum(1)
  mean_log_prob_pos = (mask * log_prob).sum(1) / np.maximum(pos_count, 1)
  return (-mean_log_prob_pos).mean()


def vicreg(x, y, sim=25.0, std=25.0, cov=1.0):
  """Bardes et al. 2022, a transcription of the official VICReg forward."""
  n, d = x.shape
  repr_loss = ((x - y) ** 2).mean()
  x = x - x.mean(0)
  y = y - y.mean(0)
  std_x = np.sqrt(x.var(0, ddof=1) + 1e-4)
  std_y = np.sqrt(y.var(0, ddof=1) + 1e-4)
  std_loss = np.maximum(0, 1 - std_x).mean() / 2 + np.maximum(0, 1 - std_y).mean() / 2
  cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)
  off = ~np.eye(d, dtype=bool)
  cov_loss = (cov_x[off] ** 2).sum() / d + (cov_y[off] ** 2).sum() / d
  return sim * repr_loss + std * std_loss + cov * cov_loss


def barlow_twins(x, y, lam=5e-3, eps=1e-5):
  """Zbontar et al. 2021: BatchNorm1d(affine=False) standardisation, cross-correlation."""

  def bn(z):
    return (z - z.mean(0)) / np.sqrt(z.var(0) + eps)

  c = bn(x).T @ bn(y) / x.shape[0]
  off = ~np.eye(c.shape[0], dtype=bool)
  return ((np.diag(c) - 1) ** 2).sum() + lam * (c[off] ** 2).sum()


def decorrelation(z):
  c = np.corrcoef(z.T)
  d = c.shape[0]
  return (c[~np.eye(d, dtype=bool)] ** 2).sum() / (d * (d - 1))


def cross_entropy(logits, targets, mask, eps):
  """Szegedy et al. 2016 label smoothing, averaged over mask."""
  logp = log_softmax(logits, -1)
  k = logits.shape[-1]
  onehot = np.eye(k)[targets]
  target = (1 - eps) * onehot + eps / k
  per = -(target * logp).sum(-1)
  return (per * mask).sum() / mask.sum()


def robinson_ntxent(za, zb, tau, beta, tau_plus):
  """Robinson et al. 2021 hard-negative SimCLR loss, a transcription of their reference code."""
  z1, z2 = normalize(za), normalize(zb)
  b = z1.shape[0]
  out = np.concatenate([z1, z2])
  neg = np.exp(out @ out.T / tau)
  mask = np.ones((2 * b, 2 * b), bool)
  for i in range(b):
    mask[i, i] = mask[i, i + b] = mask[i + b, i + b] = mask[i + b, i] = False
  neg = neg[mask].reshape(2 * b, -1)
  pos = np.exp(np.sum(z1 * z2, -1) / tau)
  pos = np.concatenate([pos, pos])
  n = b * 2 - 2
  imp = np.exp(beta * np.log(neg))
  reweight_neg = (imp * neg).sum(-1) / imp.mean(-1)
  ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
  ng = np.maximum(ng, n * math.e ** (-1 / tau))
  return (-np.log(pos / (pos + ng))).mean()


def clip_selected_negatives(img, txt, scale, select):
  """CLIP whose denominator keeps the positive and the negatives ``select(s_row, pos)`` keeps."""
  b = img.shape[0]

  def direction(a, c):
    total = 0.0
    for i in range(b):
      s = scale * a[i] @ c.T
      negs = np.delete(s, i)
      kept = negs[select(negs, s[i])]
      total += -s[i] + logsumexp(np.concatenate([[s[i]], kept]), 0)
    return total / b

  return 0.5 * (direction(img, txt) + direction(txt, img))
