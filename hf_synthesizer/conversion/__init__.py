"""Stock -> synthesizer tools: everything that works on a model from outside it, never shipped in a checkpoint.

- `loading.py`: `load_synthesizer_model`, a stock or synthesizer checkpoint as any synthesizer variant, with a report
  of what was carried over and what starts fresh; `checkpoints.py`: reading checkpoint folders, model families, heads.
- `convert.py`: `hf-synthesizer convert`, a stock checkpoint folder -> a synthesizer checkpoint folder.
- `calibration.py`: fit the synthesizer parameters to the stock model's attention maps, layer by layer.
- `distillation.py`: `hf-synthesizer distill`, train a converted student against its stock teacher (general
  distillation on text, or the whole task recipe on labelled data); `metrics.py`: metrics through `evaluate`.
- `attention_maps.py`: the attention a model synthesizes, as numbers and images.
- `model_card.py`: the generated model card (`trainer.py`: a `Trainer` whose push uploads it); `lora.py`: the PEFT
  target check PEFT cannot make itself.
These import the modeling code (`hf_synthesizer.modeling`), never the command line (`hf_synthesizer.cli`).
"""
