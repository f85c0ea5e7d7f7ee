"""The models and pictures this project makes itself, out of the compute core's way.

The drawn world (``world``), its pretrained model (the recipe ``recipe`` and the shipped ``weights/world/``,
checked by ``weights``), the drawn default subject (``drawn_subject``) and the random stand-ins
(``tiny_model``, ``tiny_eval``). The core (the rest of ``lora_core``) never imports this package: it loads
a folder, a hub id or a file, and ``sweeper.config.embedded_models`` turns ``model.path=world``/``tiny`` into one.
"""
