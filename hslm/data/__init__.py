"""Data for training: token shards on disk and the batches read from them."""
