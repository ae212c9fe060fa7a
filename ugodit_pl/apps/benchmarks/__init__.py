"""Micro-benchmarks of the library's building blocks (run them by hand; they are not tests).

>>> from ugodit_pl.apps.benchmarks.speed import decoder_speed  # doctest: +SKIP
>>> decoder_speed(num_decoders=4, network="unet", size=64)  # doctest: +SKIP
"""
