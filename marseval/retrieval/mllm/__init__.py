"""Multimodal-LLM embedders of MarsRetrieval (`mllm:<key>` in retrieval.models).

registry    the embedders the paper evaluates (marseval/registry/mllm_embedders.yaml) and the
            config check: a remote-code model runs only when the config opts in with a commit
load        an embedder's adapter (its family's module) on its weights
building    complete-weights loading and registry-sized batches, shared by the adapters
pooling     the last non-pad token of a batch (left or right padded), the mean under a mask
Adapters, one per family, each the published steps on transformers' own classes:
llava_next  E5-V (LLaVA-NeXT on LLaMA-3)
qwen2_vl    GME (and the Qwen2-VL pieces VLM2Vec and Ops-MM share)
vlm2vec     VLM2Vec-V2.0 and B3++ (LoRA merged with peft)
ops_mm      Ops-MM-embedding-v1
qwen3_vl    Qwen3-VL-Embedding
jina_v4     jina-embeddings-v4 (Qwen2.5-VL, the retrieval task LoRA)
bge_vl      BGE-VL (CLIP, JPEG q95 re-encoding)
"""
