namespace Conveyor.Tests.Deploy;

/// <summary>Every overlay under deploy/k8s/overlays: a new one is tested without being listed.</summary>
public static class Overlays
{
    public static TheoryData<string> All()
    {
        var data = new TheoryData<string>();
        var root = RepositoryRoot.Combine("deploy", "k8s", "overlays");
        foreach (var directory in Directory.GetDirectories(root).Order(StringComparer.Ordinal))
        {
            if (File.Exists(Path.Combine(directory, "kustomization.yaml")))
            {
                data.Add(Path.GetFileName(directory));
            }
        }

        return data;
    }

    public static void AssertNone(RenderedOverlay overlay, string rule, IEnumerable<string> problems)
    {
        var list = problems.Distinct(StringComparer.Ordinal).ToList();
        if (list.Count > 0)
        {
            Assert.Fail($"overlays/{overlay.Name}: {rule}\n  - {string.Join("\n  - ", list)}");
        }
    }
}
