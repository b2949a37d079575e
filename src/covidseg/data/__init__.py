"""Data: discovery of the COVID-QU-Ex layout, preprocessing, the on-disk cache and datasets."""
