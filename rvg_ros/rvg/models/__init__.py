"""The learned parts of ``rvg``: one concept per file (encoder, condition net, flow DiT)."""
