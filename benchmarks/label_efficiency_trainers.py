"""Fine-tuning variants compared by ``label_efficiency.py`` (loaded with ``-tr label_efficiency_trainers:Name``)."""

from smitunet.training.semi_supervised import SMITSemiSupervisedTrainer, region_dice_ce
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


class SMITSemiSupervisedTrainerVoxelWeight(SMITSemiSupervisedTrainer):
    """The fourth version: the labelled crops whole beside the mixed ones, but one mixed-crop loss with a weight per
    voxel (1 labelled, alpha x ramp pseudo-labelled) and a per-sample Dice. Within a crop that weight cancels out
    of the Dice ratio, so the ramp and alpha hardly acted on the Dice term."""

    def mixed_output_loss(self, logits, target, labelled_region, pseudo_region, scale):
        return region_dice_ce(logits, target, labelled_region + scale * pseudo_region, batch_dice=False)


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
