import pytest
import torch
import torchvision

from leukemia.errors import UserError
from leukemia.models import build_model, resnet

TORCHVISION_PARAMETERS = {18: 11_689_512, 50: 25_557_032, 152: 60_192_808}


@pytest.mark.parametrize("depth", [18, 50, 152])
def test_parameter_count_equals_torchvision(depth):
    model = resnet(depth, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS[depth]


@pytest.mark.parametrize("depth", [18, 50, 152])
def test_loads_torchvision_state_dict_and_gives_the_same_outputs(depth):
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")(num_classes=1000).eval()
    model = resnet(depth, num_classes=1000)
    reference_shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == reference_shapes
    model.load_state_dict(reference.state_dict(), strict=True)
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=1e-5)


@pytest.mark.parametrize("depth", [18, 50, 152])
@pytest.mark.parametrize("side", [32, 64])
def test_two_class_output_shape(depth, side):
    model = resnet(depth).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 3, side, side)).shape == (3, 2)


def test_imagenet_weights_load_with_a_new_head(tmp_path):
    reference = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(18, num_classes=2, weights=path)
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.fc.weight.shape == (2, 512)


def test_weights_of_another_depth_are_refused_by_name(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(UserError, match=r"resnet50\.pth.*does not fit resnet18"):
        build_model(18, weights=path)


def test_missing_weights_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match="model.weights=.*nope.pth: no such file"):
        build_model(18, weights=tmp_path / "nope.pth")


def test_unsupported_depth_is_a_user_error():
    with pytest.raises(UserError, match="model.depth=34"):
        resnet(34)
