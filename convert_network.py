"""Convert a network pickle (ours, EDM's or the original Patch Diffusion release's) to .safetensors.

    python convert_network.py --network=edm-cifar10-32x32-cond-vp.pkl    # writes edm-cifar10-32x32-cond-vp.safetensors

The result holds the EMA network's weights and, as JSON metadata, the class in
training/networks.py and its constructor arguments (and the latent decoder's settings). The pickle
is read without running code from it (`--trust-pickle` unpickles it fully, for networks the
restricted reader cannot rebuild); generate.py and train.py --transfer load the result without
unpickling anything.
"""

import os
import re

import click

import dnnlib
from dnnlib.util import UserError
from torch_utils import distributed
from training import checkpoints


def check_dest(dest, network_url):
    """Raises UserError unless `dest` can take the converted network: a writable `.safetensors`
    name that is not the input and is new or already a network file this tool wrote (its header
    holds our metadata); any other file is not replaced."""
    if not dest.endswith('.safetensors'):
        raise UserError(f'--dest={dest}: the network is written as a .safetensors file')
    dnnlib.util.check_output_file(dest, '--dest')
    if not os.path.lexists(dest):
        return
    local = not re.match(r'^[a-z][a-z0-9+.-]*://', network_url)
    if local and os.path.exists(network_url) and os.path.samefile(dest, network_url):
        raise UserError(f'--dest={dest}: is the input file itself; not replacing it')
    if not os.path.isfile(dest) or not checkpoints.is_our_safetensors(dest):
        raise UserError(f'--dest={dest}: exists and is not a network file written by convert_network.py or train.py; not replacing it')


@click.command(context_settings=dict(max_content_width=100))
@click.option('--network', 'network_url', help='Network pickle to convert', metavar='PKL|URL', type=str, required=True)
@click.option('--dest', help='Output file  [default: the pickle\'s name with .safetensors]', metavar='PATH', type=str)
@click.option('--trust-pickle', 'trust_pickle', help='Unpickle --network fully, running code it carries (only for files you trust)', is_flag=True)
def main(network_url, dest, trust_pickle):
    """Write a network pickle's EMA network as .safetensors (weights plus the class and its
    constructor arguments), which loads without unpickling anything. An existing --dest is
    replaced only if it is such a file.

    \b
    python convert_network.py --network=network-snapshot-000500.pkl
    python convert_network.py --network=URL --dest=edm-cifar10-32x32-cond-vp.safetensors
    """
    if dest is None:
        if network_url.endswith('.safetensors') or '://' in network_url:
            raise click.UsageError('--dest: give the output file (it defaults only for local .pkl files)')
        dest = checkpoints.safetensors_path(network_url)
    check_dest(dest, network_url)
    with dnnlib.util.option_errors(names={'network': '--network', 'trust': '--trust-pickle'}):
        net, decoder = checkpoints.unpickle_network(network_url, 'network', trust=trust_pickle)
    checkpoints.save_safetensors(dest, net, decoder)
    distributed.print0(f'Wrote "{dest}" ({checkpoints.describe(net)[0]}).')


if __name__ == '__main__':
    main()
