"""A tiny network configuration shared by the trainer tests (about 40 k parameters, fast on 2 cores)."""

TINY_NET = {"base": 8, "groups": 4, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_ds": [],
            "attention_middle": False, "encoder_blocks": 0, "encoder_nf": 8, "encoder_growth": 4}


def tiny_overrides(out, **kw):
    """TrainConfig overrides for a few-second run on synthetic data."""
    base = dict(data="synthetic-gray:5", steps=4, tile=32, batch=2, lr=1e-3, val_every=0, val_images=2,
                val_tiles=1, val_steps=2, log_every=0, out=str(out), net=dict(TINY_NET))
    base.update(kw)
    return base
