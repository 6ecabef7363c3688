"""Models: DeiT/ViT builders, checkpoint loading, and the compact (exported) ViT."""
from models.vit import (DEIT_TYPES, DEMO_TYPES, DIGITS_TYPES, MODEL_TYPES, create_model, is_distilled,
                        resolve_model_type, set_fused_attn)
from models.checkpoint import (CheckpointError, CheckpointWarning, extract_state_dict, load_pretrained,
                               read_checkpoint)
