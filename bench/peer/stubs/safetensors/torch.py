def load_file(*args, **kwargs):
    raise RuntimeError("safetensors is stubbed for the offline peer")


save_file = load_file
