"""Data readers: ShareGPT conversations (sharegpt.py) and evaluation question sets (questions.py).
Drafters, training and benchmarks all read data through here (drafters never import train/)."""
