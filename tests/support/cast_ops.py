"""An operations namespace whose layers cast their weights to the input's dtype at run time
(as ComfyUI's ``comfy.ops`` casting layers do, ``comfy_cast_weights``), without ComfyUI: the
kv_core loaders' fp8-weight path is tested with it."""
import torch


class _CastMixin:
    comfy_cast_weights = True

    def _cast(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if getattr(self, "bias", None) is not None else None
        return w, b


class _Linear(_CastMixin, torch.nn.Linear):
    def forward(self, x):
        return torch.nn.functional.linear(x, *self._cast(x))


class _Conv2d(_CastMixin, torch.nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, *self._cast(x))


class _Conv1d(_CastMixin, torch.nn.Conv1d):
    def forward(self, x):
        return self._conv_forward(x, *self._cast(x))


class _Conv3d(_CastMixin, torch.nn.Conv3d):
    def forward(self, x):
        return self._conv_forward(x, *self._cast(x))


class _ConvTranspose2d(_CastMixin, torch.nn.ConvTranspose2d):
    def forward(self, x, output_size=None):
        w, b = self._cast(x)
        return torch.nn.functional.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding,
                                                    self.groups, self.dilation)


class _GroupNorm(_CastMixin, torch.nn.GroupNorm):
    def forward(self, x):
        w, b = self._cast(x) if self.affine else (None, None)
        return torch.nn.functional.group_norm(x, self.num_groups, w, b, self.eps)


class _LayerNorm(_CastMixin, torch.nn.LayerNorm):
    def forward(self, x):
        w, b = self._cast(x) if self.elementwise_affine else (None, None)
        return torch.nn.functional.layer_norm(x, self.normalized_shape, w, b, self.eps)


class _Embedding(_CastMixin, torch.nn.Embedding):
    def forward(self, x):
        return torch.nn.functional.embedding(x, self.weight)


class CastOps:
    Linear, Conv1d, Conv2d, Conv3d = _Linear, _Conv1d, _Conv2d, _Conv3d
    ConvTranspose2d, GroupNorm, LayerNorm, Embedding = _ConvTranspose2d, _GroupNorm, _LayerNorm, _Embedding
