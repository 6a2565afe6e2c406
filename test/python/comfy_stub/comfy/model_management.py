"""Stand-in for comfy.model_management: devices, the interrupt flag, nothing else."""
import threading
import torch


class InterruptProcessingException(Exception):
    pass


_lock = threading.RLock()
interrupt_processing = False


def interrupt_current_processing(value=True):
    global interrupt_processing
    with _lock:
        interrupt_processing = value


def processing_interrupted():
    with _lock:
        return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    with _lock:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()


def get_torch_device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")
