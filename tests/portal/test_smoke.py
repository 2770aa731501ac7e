from tests.portal.factories import API, network


def test_network_builds(portal, client):
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"])
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    assert release["status"] == "published"
    r = client.get(f"{API}/federations/{net.fid}/releases", headers=net.site_a.headers)
    assert r.status_code == 200, r.text
