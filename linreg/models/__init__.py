"""The models: the linear model (`linear`), the exact solver (`exact`), the gradient trainers
(`trainers`), standardization, inference statistics, `fit` (one fit of any trainer) and the scikit-learn
style `estimator`.
"""
