"""Image classifiers f = h ∘ g: a backbone g (penultimate features) and a linear head h.

Every classifier takes float images in [0, 1] shaped (N,3,S,S) — the output of
:func:`raydbb.models.transforms.to_model_input` — and applies ImageNet normalisation itself, so
callers (training, selection, pruning, integrated gradients) never normalise and never disagree.

ImageNet weights for the ResNets are read from a local file (``classifier.weights``) or from the
torch hub cache; nothing is ever downloaded and a missing file is an error, never a silent
random initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from raydbb.config import ClassifierConfig
from raydbb.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """Normalise -> backbone (features) -> linear head (logits).

    Attributes: ``backbone`` maps normalised images to (N, D) features, ``head`` is the
    ``nn.Linear(D, num_classes)``, ``config`` the :class:`ClassifierConfig` it was built from.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, config: ClassifierConfig):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.config = config
        self.num_classes = num_classes
        # Not persistent: constants, and keeps state dicts identical to the torchvision layout.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, D) of images in [0, 1]."""
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def small_cnn(width: int) -> tuple[nn.Module, int]:
    """A 6-conv CNN for 32-128 px images, cheap enough to train on a laptop CPU in a minute.

    Stride-2 stem, then three stages at widths w, 2w, 4w (each halving the resolution after the
    first), global average pooling. Returns ``(backbone, feature_dim)``.
    """
    w = width
    backbone = nn.Sequential(
        _conv_bn_relu(3, w, stride=2),
        _conv_bn_relu(w, w),
        _conv_bn_relu(w, 2 * w, stride=2),
        _conv_bn_relu(2 * w, 2 * w),
        _conv_bn_relu(2 * w, 4 * w, stride=2),
        _conv_bn_relu(4 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return backbone, 4 * w


def _torchvision_weight_files(arch: str) -> list[str]:
    """Standard torch hub file names of the torchvision ImageNet weights, preferred first."""
    from torchvision.models import ResNet18_Weights, ResNet50_Weights

    enum = {"resnet18": ResNet18_Weights, "resnet50": ResNet50_Weights}[arch]
    ordered = [enum.DEFAULT] + [w for w in enum if w != enum.DEFAULT]
    return [Path(w.url).name for w in ordered]


SYNTHETIC_BACKBONE = (Path(__file__).resolve().parents[1] / "assets" / "synthetic_backbone"
                      / "backbone.safetensors")
"""The miniature world's stand-in for ImageNet weights: a small_cnn backbone pretrained on the
synthetic pretraining corpus (:func:`raydbb.data.synthetic.render_pretrain_sample`)."""


def find_imagenet_weights(cfg: ClassifierConfig) -> Path:
    """The ImageNet weights file to load: ``cfg.weights`` or a torchvision file in the hub cache.

    For ``small_cnn`` the default is the shipped synthetic backbone (:data:`SYNTHETIC_BACKBONE`).
    Raises a one-line :class:`ConfigError` telling the user what to provide when there is none.
    """
    if not cfg.weights and cfg.arch == "small_cnn":
        if SYNTHETIC_BACKBONE.is_file():
            return SYNTHETIC_BACKBONE
        raise ConfigError(f"classifier.pretrained=true for small_cnn but {SYNTHETIC_BACKBONE} is missing; "
                          "provide classifier.weights=PATH or set classifier.pretrained=false")
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"classifier.weights={cfg.weights}: file not found; expected a local "
                              f"{cfg.arch} ImageNet weights file (.pth or .safetensors)")
        return path
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    names = _torchvision_weight_files(cfg.arch)
    for name in names:
        if (hub / name).is_file():
            return hub / name
    raise ConfigError(
        f"classifier.pretrained=true but no ImageNet weights for {cfg.arch} were found (looked for "
        f"{' or '.join(names)} in {hub}); provide classifier.weights=PATH or set "
        "classifier.pretrained=false to train from a random initialisation"
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth``/``.pt`` file (``weights_only=True``).

    Accepts a bare state dict or one wrapped under a ``state_dict``/``model`` key.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors: report which file, in one line
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"classifier weights {path}: not a readable torch weights file ({first})") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"classifier weights {path}: expected a state dict of tensors")
    return obj


def load_small_cnn_weights(backbone: nn.Module, cfg: ClassifierConfig) -> Path:
    """Load pretrained small_cnn backbone weights (headless keys ``0.0.weight``..., or a raydbb
    classifier checkpoint's ``backbone.*`` keys, head ignored) strictly into ``backbone``."""
    path = find_imagenet_weights(cfg)
    state = load_state_dict_file(path)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ConfigError(f"classifier.weights {path}: not small_cnn width {cfg.width} weights (missing "
                          f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]})")
    backbone.load_state_dict(state, strict=True)
    return path


def _resnet(cfg: ClassifierConfig) -> tuple[nn.Module, int]:
    from torchvision import models

    net = getattr(models, cfg.arch)(weights=None)
    if cfg.pretrained:
        path = find_imagenet_weights(cfg)
        state = load_state_dict_file(path)
        # The ImageNet head is dropped anyway, so a headless backbone file is fine too.
        result = net.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("fc.")]
        if missing or result.unexpected_keys:
            raise ConfigError(
                f"classifier.weights {path}: not torchvision {cfg.arch} weights "
                f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


def build_classifier(cfg: ClassifierConfig, num_classes: int) -> Classifier:
    """Build the classifier of ``cfg.arch`` with a fresh ``num_classes``-way linear head.

    ``small_cnn`` is randomly initialised (from torch's global RNG: seed before calling), or
    loads the pretrained synthetic backbone when ``cfg.pretrained`` (:func:`load_small_cnn_weights`);
    ``resnet18``/``resnet50`` load ImageNet weights when ``cfg.pretrained`` (see
    :func:`find_imagenet_weights`) or start from a random initialisation when it is false.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
    if cfg.arch == "small_cnn":
        backbone, dim = small_cnn(cfg.width)
        if cfg.pretrained:
            load_small_cnn_weights(backbone, cfg)
    else:
        backbone, dim = _resnet(cfg)
    return Classifier(backbone, dim, num_classes, cfg)
