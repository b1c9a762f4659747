from sentence_transformers import SentenceTransformer


def test_tiny_model_loads_as_sentence_transformer(tiny_model_dir, tiny_data_dir):
    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    v = m.encode(["a query about cells"], normalize_embeddings=True)
    assert v.shape == (1, 32)
