"""Default models shipped inside the package (see glassfinder.embed.packaged): weights + cards.

`glasses.pt` / `glasses.card.json`: the embedding model; `glasses-presence.json` /
`glasses-presence.card.json`: the glasses-presence check. Retrain both with
`python -m glassfinder.embed.default_model`.
"""
