"""Batch indexing of whole collections: plan, segment, embed, write - locally or on Ray."""
