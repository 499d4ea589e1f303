# microtrain: on-device int8 training for MicroPython.
#
#   import microtrain
#   m = microtrain.load("model.mtm")          # frozen weights read in place from flash (rp2)
#   t = microtrain.Trainer(m)                 # one arena for the training plan
#   loss = t.step(x, label)                   # x: int8 sample bytes, label: class index
#   t.validate(); t.checkpoint(); t.rollback(); t.add_class(samples, "wave")

from .model import Model, load
from .trainer import Trainer, TrainingError
from .modelfile import ModelFileError
from . import backend

__version__ = "0.1.0"
