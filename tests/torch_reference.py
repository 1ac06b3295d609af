"""A PyTorch reference of HINet, written from the published network's wiring.

The wiring is that of the official code (megvii-model/HINet, `basicsr/models/archs/hinet_arch.py`):
HIN encoder blocks, CSFF between the stages, SAM. It names its tensors exactly as the official
checkpoints do (`tests/data/official_checkpoint_layout.json`), so a state dict of this module has the
layout of HINet-*.pth. Used by the parity tests and by bench/model_speed.py as the PyTorch baseline.
Requires torch (the `test` extra).
"""

import torch
from torch import nn
import torch.nn.functional as F


class UNetConvBlock(nn.Module):
  """Encoder block (optionally with HIN, CSFF and downsampling) and decoder body."""

  def __init__(self, in_size, out_size, downsample, relu_slope, use_csff=False, use_hin=False):
    super().__init__()
    self.downsample_enabled = downsample
    self.use_csff = use_csff
    self.use_hin = use_hin
    self.relu_slope = relu_slope
    self.identity = nn.Conv2d(in_size, out_size, 1)
    self.conv_1 = nn.Conv2d(in_size, out_size, 3, padding=1)
    self.conv_2 = nn.Conv2d(out_size, out_size, 3, padding=1)
    if use_csff:
      self.csff_enc = nn.Conv2d(out_size, out_size, 3, padding=1)
      self.csff_dec = nn.Conv2d(out_size, out_size, 3, padding=1)
    if use_hin:
      self.norm = nn.InstanceNorm2d(out_size // 2, affine=True)
    if downsample:
      self.downsample = nn.Conv2d(out_size, out_size, 4, stride=2, padding=1, bias=False)

  def forward(self, x, enc=None, dec=None):
    out = self.conv_1(x)
    if self.use_hin:
      first, second = torch.chunk(out, 2, dim=1)
      out = torch.cat([self.norm(first), second], dim=1)
    out = F.leaky_relu(out, self.relu_slope)
    out = F.leaky_relu(self.conv_2(out), self.relu_slope)
    out = out + self.identity(x)
    if enc is not None and dec is not None:
      out = out + self.csff_enc(enc) + self.csff_dec(dec)
    if self.downsample_enabled:
      return self.downsample(out), out
    return out


class UNetUpBlock(nn.Module):

  def __init__(self, in_size, out_size, relu_slope):
    super().__init__()
    self.up = nn.ConvTranspose2d(in_size, out_size, 2, stride=2)
    self.conv_block = UNetConvBlock(in_size, out_size, False, relu_slope)

  def forward(self, x, skip):
    return self.conv_block(torch.cat([self.up(x), skip], dim=1))


class SAM(nn.Module):

  def __init__(self, n_feat, in_chn=3):
    super().__init__()
    self.conv1 = nn.Conv2d(n_feat, n_feat, 3, padding=1)
    self.conv2 = nn.Conv2d(n_feat, in_chn, 3, padding=1)
    self.conv3 = nn.Conv2d(in_chn, n_feat, 3, padding=1)

  def forward(self, d, x_img):
    img = self.conv2(d) + x_img
    attn = torch.sigmoid(self.conv3(img))
    return self.conv1(d) * attn + d, img


class HINetTorch(nn.Module):
  """Both stages; forward returns [stage1, stage2] in NCHW."""

  def __init__(self, in_chn=3, wf=64, depth=5, relu_slope=0.2, hin_position_left=0,
               hin_position_right=4):
    super().__init__()
    self.depth = depth
    self.down_path_1 = nn.ModuleList()
    self.down_path_2 = nn.ModuleList()
    self.conv_01 = nn.Conv2d(in_chn, wf, 3, padding=1)
    self.conv_02 = nn.Conv2d(in_chn, wf, 3, padding=1)
    prev = wf
    for i in range(depth):
      use_hin = hin_position_left <= i <= hin_position_right
      down = i + 1 < depth
      self.down_path_1.append(UNetConvBlock(prev, (2**i) * wf, down, relu_slope, use_hin=use_hin))
      self.down_path_2.append(
          UNetConvBlock(prev, (2**i) * wf, down, relu_slope, use_csff=down, use_hin=use_hin))
      prev = (2**i) * wf
    self.up_path_1 = nn.ModuleList()
    self.up_path_2 = nn.ModuleList()
    self.skip_conv_1 = nn.ModuleList()
    self.skip_conv_2 = nn.ModuleList()
    for i in reversed(range(depth - 1)):
      width = (2**i) * wf
      self.up_path_1.append(UNetUpBlock(prev, width, relu_slope))
      self.up_path_2.append(UNetUpBlock(prev, width, relu_slope))
      self.skip_conv_1.append(nn.Conv2d(width, width, 3, padding=1))
      self.skip_conv_2.append(nn.Conv2d(width, width, 3, padding=1))
      prev = width
    self.sam12 = SAM(prev, in_chn)
    self.cat12 = nn.Conv2d(prev * 2, prev, 1)
    self.last = nn.Conv2d(prev, in_chn, 3, padding=1)

  def forward(self, x):
    image = x
    x1 = self.conv_01(image)
    encs, decs = [], []
    for i, down in enumerate(self.down_path_1):
      if i + 1 < self.depth:
        x1, skip = down(x1)
        encs.append(skip)
      else:
        x1 = down(x1)
    for i, up in enumerate(self.up_path_1):
      x1 = up(x1, self.skip_conv_1[i](encs[-i - 1]))
      decs.append(x1)
    feat, out_1 = self.sam12(x1, image)
    x2 = self.cat12(torch.cat([self.conv_02(image), feat], dim=1))
    blocks = []
    for i, down in enumerate(self.down_path_2):
      if i + 1 < self.depth:
        x2, skip = down(x2, encs[i], decs[-i - 1])
        blocks.append(skip)
      else:
        x2 = down(x2)
    for i, up in enumerate(self.up_path_2):
      x2 = up(x2, self.skip_conv_2[i](blocks[-i - 1]))
    return [out_1, self.last(x2) + image]


def random_state_dict(seed=0, **kwargs):
  """A HINetTorch built with seeded random weights (and non-trivial norm affine), and its state dict."""
  torch.manual_seed(seed)
  net = HINetTorch(**kwargs)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.endswith('norm.weight'):
        p.uniform_(0.5, 1.5)
      elif name.endswith('norm.bias'):
        p.uniform_(-0.2, 0.2)
  net.eval()
  return net, net.state_dict()
