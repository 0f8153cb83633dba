"""Checkpoints: reading (`loader.load_model`, lazily, strictly, optionally keeping a recipe's formats in memory),
writing the official FP8/FP4 layout or any recipe (`writer.save_model`), converting (`convert.convert_checkpoint`,
to a dsv4 checkpoint or GGUF) and describing (`inspect.describe`). `layout` says what is stored for a model under
a recipe; `sources` reads units from a checkpoint or a model; `safetensors_io` is the file format itself;
`gguf_reader` reads back the GGUF files we write."""
