"""Default models shipped inside the package (see glassfinder.nets.packaged): weights + cards.

`glasses.pt` / `glasses.card.json`: the embedding model, retrained by
`python -m glassfinder.embed.default_model`. `face-analysis.pt` / `face-analysis.card.json`: eye
centres, landmarks and glasses presence of a face crop, retrained by
`python -m glassfinder.face.training.train --work DIR`.
"""
