"""Models: timm ViT builders and checks, checkpoint loading, and the compact (exported) ViT."""
from models.vit import (DEIT_TYPES, DEMO_TYPES, DIGITS_TYPES, MODEL_TYPES, UnsupportedModelError, check_supported, create_model,
                        is_distilled, model_kwargs_of, rebuild, resolve_model_type, set_fused_attn, vit_structure)
from models.checkpoint import (CheckpointError, CheckpointWarning, extract_state_dict, load_exact, load_pretrained,
                               read_checkpoint)
