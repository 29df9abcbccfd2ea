"""Multimodal-LLM embedders of MarsRetrieval (`mllm:<key>` in retrieval.models).

registry    the embedders the paper evaluates (marseval/registry/mllm_embedders.yaml) and the
            config check: a remote-code model runs only when the config opts in with a commit
pooling     the last non-pad token of a batch, left or right padded
llava_next  E5-V (LLaVA-NeXT on LLaMA-3), on transformers' own classes
"""
