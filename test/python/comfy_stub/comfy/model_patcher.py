"""Stand-in for comfy.model_patcher.ModelPatcher: the parts a MODEL wrapper relies on."""
import copy
import uuid


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.model_options = {"transformer_options": {}}
        self.patches = {}
        self.patches_uuid = uuid.uuid4()
        self.attachments = {}
        self.parent = None

    def model_size(self):
        return self.size

    def loaded_size(self):
        return self.size

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.model_size(),
                           weight_inplace_update=self.weight_inplace_update)
        n.model_options = copy.deepcopy(self.model_options)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.attachments = dict(self.attachments)
        n.parent = self
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def get_model_object(self, name):
        obj = self.model
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
