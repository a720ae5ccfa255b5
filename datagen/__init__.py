"""Data for trying and measuring the pipeline: the seed notebooks' sample (`sample`) and large synthetic
tables (`synth`). Tools, not library: nothing in `linreg` imports them.
"""
