"""Fine-tuning variants compared by ``label_efficiency.py`` (loaded with ``-tr label_efficiency_trainers:Name``)."""

from smitunet.training.trainer import SMITTrainer


class SMITTrainerEncoderLR1(SMITTrainer):
    """The pretrained encoder at the decoder's learning rate (the default trains it 4x slower)."""

    encoder_lr_scale = 1.0


class SMITTrainerFrozenEncoder(SMITTrainer):
    """A probe of the encoder's features: it stays as initialised (pretrained or random), only the decoder trains."""

    def encoder_frozen(self):
        return True
