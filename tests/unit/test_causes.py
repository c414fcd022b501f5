"""The likely-cause classifier behind `caliban logs --failed`, on real-looking output."""

from __future__ import annotations

import pytest

from caliban.core import causes

VALUE_ERROR = """\
Epoch 1/3
Traceback (most recent call last):
  File "/usr/app/trainer/train.py", line 42, in <module>
    main()
  File "/usr/app/trainer/train.py", line 37, in main
    raise ValueError(f"learning rate must be positive, got {lr}")
ValueError: learning rate must be positive, got -0.1
"""

CHAINED = """\
Traceback (most recent call last):
  File "train.py", line 3, in load
    open("missing.csv")
FileNotFoundError: [Errno 2] No such file or directory: 'missing.csv'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "train.py", line 9, in <module>
    load()
  File "train.py", line 5, in load
    raise mylib.errors.DataError("no data")
mylib.errors.DataError: no data
"""

TORCH_OOM = """\
  File "/opt/conda/lib/python3.10/site-packages/torch/nn/modules/linear.py", line 114, in forward
    return F.linear(input, self.weight, self.bias)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total \
capacity; 13.10 GiB already allocated; 1.50 GiB free; 13.20 GiB reserved in total by PyTorch)
"""

TF_OOM = (
    "2024-03-01 10:00:01.123 W tensorflow/core/framework/op_kernel.cc:1830] "
    "OP_REQUIRES failed at matmul_op.cc:121 : RESOURCE_EXHAUSTED: OOM when allocating tensor "
    "with shape[8192,8192] and type float on /job:localhost/replica:0/task:0/device:GPU:0"
)

VERTEX_OOM = (
    "The replica workerpool0-0 ran out-of-memory and exited with a non-zero status of "
    "9(SIGKILL). To find out more about why your job exited please check the logs: "
    "https://console.cloud.google.com/logs/viewer?project=1&resource=ml_job%2Fjob_id%2F2"
)
VERTEX_137 = (
    "The replica workerpool0-0 exited with a non-zero status of 137. Termination reason: Error."
)
K8S_OOM = "container trainer terminated: OOMKilled (exit code 137)"
PREEMPTED = "The replica workerpool0-0 was preempted. Spot VMs may be reclaimed at any time."
IMAGE_PULL = (
    'Failed to pull image "us-docker.pkg.dev/p/caliban/app:1": rpc error: code = NotFound '
    "desc = failed to pull and unpack image: manifest unknown"
)
K8S_PULL = "Back-off pulling image: ImagePullBackOff"
QUOTA = (
    "The following quota metrics exceed quota limits: "
    "aiplatform.googleapis.com/custom_model_training_nvidia_t4_gpus"
)


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_the_python_exception_type_of_the_last_traceback() -> None:
    found = causes.classify(lines(VALUE_ERROR), exit_code=1, message="exit code 1")
    assert found == causes.Cause("exception", "ValueError")
    assert causes.exception_type(lines(CHAINED)) == "mylib.errors.DataError"


def test_a_traceback_cut_before_its_last_line_names_nothing() -> None:
    cut = lines(VALUE_ERROR)[:-1]
    assert causes.exception_type(cut) is None
    assert causes.classify(cut, exit_code=1) is None


@pytest.mark.parametrize("text", [TORCH_OOM, TF_OOM])
def test_cuda_out_of_memory_beats_the_traceback_it_raised(text: str) -> None:
    assert causes.classify(lines(text), exit_code=1) is causes.CUDA_OOM


@pytest.mark.parametrize("message", [VERTEX_OOM, VERTEX_137, K8S_OOM, "exit code 137"])
def test_killed_for_memory_from_the_platform_message(message: str) -> None:
    # The traceback printed while dying is not the cause.
    assert causes.classify(lines(VALUE_ERROR), message=message) is causes.OOM


def test_exit_137_alone_and_the_kernel_s_killed_line() -> None:
    assert causes.classify([], exit_code=137) is causes.OOM
    assert causes.classify(["step 10", "Killed"], exit_code=None) is causes.OOM
    assert causes.classify(["Killed 3 zombies"], exit_code=2) is None


def test_platform_verdicts() -> None:
    assert causes.classify([], message=PREEMPTED) is causes.PREEMPTED
    assert causes.classify([], message=IMAGE_PULL) is causes.IMAGE_PULL
    assert causes.classify([K8S_PULL]) is causes.IMAGE_PULL
    assert causes.classify([], message=QUOTA) is causes.QUOTA


def test_nothing_to_say() -> None:
    assert causes.classify(["loss 0.3", "loss 0.2"], exit_code=3, message="exit code 3") is None
    assert causes.classify([]) is None
