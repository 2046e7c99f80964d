"""Convert a network pickle (ours, EDM's or the original Patch Diffusion release's) to .safetensors.

    python convert_network.py --network=edm-cifar10-32x32-cond-vp.pkl    # writes edm-cifar10-32x32-cond-vp.safetensors

The result holds the EMA network's weights and, as JSON metadata, the class in
training/networks.py and its constructor arguments (and the latent decoder's settings). generate.py
and train.py --transfer load it without unpickling, so it runs no code from the file.
"""

import click

from torch_utils import distributed
from training import checkpoints


@click.command(context_settings=dict(max_content_width=100))
@click.option('--network', 'network_url', help='Network pickle to convert', metavar='PKL|URL', type=str, required=True)
@click.option('--dest', help='Output file  [default: the pickle\'s name with .safetensors]', metavar='PATH', type=str)
def main(network_url, dest):
    """Write a network pickle's EMA network as .safetensors (weights plus the class and its
    constructor arguments), which loads without running code from the file.

    \b
    python convert_network.py --network=network-snapshot-000500.pkl
    python convert_network.py --network=URL --dest=edm-cifar10-32x32-cond-vp.safetensors
    """
    if dest is None:
        if network_url.endswith('.safetensors') or '://' in network_url:
            raise click.UsageError('--dest: give the output file (it defaults only for local .pkl files)')
        dest = checkpoints.safetensors_path(network_url)
    net, decoder = checkpoints.unpickle_network(network_url, '--network')
    checkpoints.save_safetensors(dest, net, decoder)
    distributed.print0(f'Wrote "{dest}" ({checkpoints.describe(net)[0]}).')


if __name__ == '__main__':
    main()
