"""Fine-tuning variants compared by ``label_efficiency.py`` (loaded with ``-tr label_efficiency_trainers:Name``)."""

import torch
import torch.nn.functional as F

from smitunet.training.losses import deep_supervision_weights, downsample_target
from smitunet.training.semi_supervised import SMITSemiSupervisedTrainer
from smitunet.training.trainer import SMITTrainer


class SMITTrainerFrozenEncoder(SMITTrainer):
    """A probe of the encoder's features: it stays as initialised (pretrained or random), only the decoder trains."""

    def encoder_frozen(self):
        return True


class SMITTrainerUniformLR(SMITTrainer):
    """No layer-wise decay: the pretrained encoder learns at the decoder's rate (the recipe's ablation)."""

    layer_decay = 1.0


class SMITTrainerEncoderWarmup(SMITTrainer):
    """The encoder frozen for the first 10 % of the iterations while the fresh decoder learns to read it."""

    @property
    def encoder_warmup_iters(self):
        return self.num_epochs * self.iters_per_epoch // 10


def voxel_weighted_dice_ce(logits, target, weight, smooth=1e-5):
    """The first four versions' mixed-crop loss: cross-entropy plus per-sample soft Dice with the pseudo-label
    weight on each voxel. Within a crop that weight cancels out of the Dice ratio, so the ramp and alpha hardly
    acted on the Dice term."""
    logits, target, w = logits.float(), target[:, 0].long(), weight[:, 0].float()
    ce = (F.cross_entropy(logits, target, reduction="none") * w).sum() / w.sum().clamp(min=1.0)
    probs = torch.softmax(logits, 1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
    axes, wb = tuple(range(2, logits.ndim)), w[:, None]
    dice = (2 * (probs * onehot * wb).sum(axes) + smooth) / ((probs * wb).sum(axes) + (onehot * wb).sum(axes) + smooth)
    return ce + (1 - dice.mean())


class SMITSemiSupervisedTrainerVoxelWeight(SMITSemiSupervisedTrainer):
    """The fourth version: the labelled crops whole beside the mixed ones, but the mixed-crop loss weights the
    pseudo-labelled voxels (weight 1 labelled, alpha x ramp pseudo-labelled) inside one loss."""

    def mixed_loss(self, output, target, labelled_region, pseudo_region):
        weight = labelled_region + self.unlabelled_scale() * pseudo_region
        outputs = list(output) if isinstance(output, (list, tuple)) else [output]
        outputs = outputs if self.deep_supervision else outputs[:1]
        total = 0.0
        for w, logits in zip(deep_supervision_weights(len(outputs)), outputs):
            if w:
                shape = logits.shape[2:]
                total = total + w * voxel_weighted_dice_ce(logits, downsample_target(target, shape),
                                                           downsample_target(weight, shape))
        return total


class SMITSemiSupervisedTrainerNoWarmup(SMITSemiSupervisedTrainerVoxelWeight):
    """The first version of the semi-supervised trainer: mixed crops from the first step (a teacher that knows
    nothing yet) and the loss on the finest output only."""

    supervised_warmup_fraction = 0.0
    deep_supervision = False
    pseudo_largest_component = False
    labelled_step = False


class SMITSemiSupervisedTrainerNoLCC(SMITSemiSupervisedTrainerVoxelWeight):
    """The second version: the labelled-only warm-up, but every pseudo-labelled component kept."""

    pseudo_largest_component = False
    labelled_step = False


class SMITSemiSupervisedTrainerMixedOnly(SMITSemiSupervisedTrainerVoxelWeight):
    """The third version: the warm-up and largest-component pseudo-labels, but after the warm-up the student sees
    the mixed crops only (BCP's step), not the whole labelled crops beside them."""

    labelled_step = False


class SMITSemiSupervisedTrainerNoMix(SMITSemiSupervisedTrainer):
    """Diagnosis: no copy-paste. The cuboid shrinks to one voxel, so a pair is the labelled crop or the unlabelled
    crop as it is, the latter against the teacher's pseudo-labels: mean-teacher self-training."""

    mix_fraction = 0.0


class SMITSemiSupervisedTrainerNoPseudo(SMITSemiSupervisedTrainer):
    """Diagnosis: the copy-paste images, but no pseudo-label loss: only the labelled voxels of the mixed crops
    teach."""

    unlabelled_weight = 0.0
