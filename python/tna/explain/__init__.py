"""Explanations of spiking networks and their evaluation (Vandersmissen & Oramas, arXiv 2302.10764).

- ``metrics``: deletion and insertion AUC, average drop and increase in confidence, pointing game, IoU,
  relevance mass and the Gini sparsity of a map, vectorized over a batch of images, oriented so that higher
  is better.
- ``coherency``: correlations between metrics across images and Krippendorff's alpha over the method ranking.
"""
