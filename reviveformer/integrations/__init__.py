"""Integrations with other training loops: `reviveformer.integrations.transformers.ReviveformerCallback` for a
`transformers.Trainer`. Each is imported by its own path, so its host library is needed only when it is used."""
