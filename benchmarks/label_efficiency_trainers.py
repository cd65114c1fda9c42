"""Fine-tuning variants compared by ``label_efficiency.py`` (loaded with ``-tr label_efficiency_trainers:Name``)."""

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


class SMITSemiSupervisedTrainerNoWarmup(SMITSemiSupervisedTrainer):
    """The first version of the semi-supervised trainer: mixed crops from the first step (a teacher that knows
    nothing yet) and the loss on the finest output only."""

    supervised_warmup_fraction = 0.0
    deep_supervision = False
    pseudo_largest_component = False
    labelled_step = False


class SMITSemiSupervisedTrainerNoLCC(SMITSemiSupervisedTrainer):
    """The second version: the labelled-only warm-up, but every pseudo-labelled component kept."""

    pseudo_largest_component = False
    labelled_step = False


class SMITSemiSupervisedTrainerMixedOnly(SMITSemiSupervisedTrainer):
    """The third version: the warm-up and largest-component pseudo-labels, but after the warm-up the student sees
    the mixed crops only (BCP's step), not the whole labelled crops beside them."""

    labelled_step = False
