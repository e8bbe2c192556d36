"""The FlowCLAS model core: backbones, flow, model, losses, checkpoints. No ROS imports."""
from .backbones import Backbone, BackboneConfig, build_backbone
from .flow import Flow, FlowConfig
from .flowclas import FlowCLAS, ModelConfig

__all__ = ["Backbone", "BackboneConfig", "build_backbone", "Flow", "FlowConfig", "FlowCLAS",
           "ModelConfig"]
