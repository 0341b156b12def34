using Conveyor.Tests.ErrorQueues;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace Conveyor.Tests.Dashboard;

/// <summary>
/// Debian's chromium (<c>/usr/bin/chromium</c>, installed by scripts/test.sh) driven by Playwright.
/// Playwright's own browser download is never used.
/// </summary>
public static class Chromium
{
    public const string ExecutablePath = "/usr/bin/chromium";

    private static readonly string[] Args =
    [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
    ];

    public static async Task<(IPlaywright Playwright, IBrowser Browser)> LaunchAsync()
    {
        Assert.True(File.Exists(ExecutablePath),
            $"The browser tests need Debian's chromium at {ExecutablePath}: run scripts/test.sh (it installs it) or `sudo apt-get install -y chromium`.");
        Environment.SetEnvironmentVariable("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
        var playwright = await Playwright.CreateAsync();
        try
        {
            var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
            {
                ExecutablePath = ExecutablePath,
                Headless = true,
                Args = Args,
                Timeout = 60_000,
            });
            return (playwright, browser);
        }
        catch
        {
            playwright.Dispose();
            throw;
        }
    }

    /// <summary>Signs <paramref name="page"/> in to the dashboard at <paramref name="baseAddress"/> with the admin key, and waits until it shows who is signed in.</summary>
    public static async Task SignInAsAdminAsync(IPage page, Uri baseAddress)
    {
        await page.GotoAsync(new Uri(baseAddress, "/dashboard/login").ToString());
        await page.FillAsync("#apiKey", ErrorQueueKit.AdminKey);
        await page.ClickAsync("#sign-in");
        await Expect(page.Locator("#who-name")).ToHaveTextAsync(ErrorQueueKit.AdminName, new() { Timeout = 60_000 });
    }

    /// <summary><c>artifacts/test-results/screenshots</c> of the repository (the folder holding Worker.sln).</summary>
    public static string ScreenshotDirectory()
    {
        var directory = new DirectoryInfo(AppContext.BaseDirectory);
        while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "Worker.sln")))
        {
            directory = directory.Parent;
        }

        var root = directory?.FullName ?? throw new InvalidOperationException($"No Worker.sln above {AppContext.BaseDirectory}.");
        var screenshots = Path.Combine(root, "artifacts", "test-results", "screenshots");
        Directory.CreateDirectory(screenshots);
        return screenshots;
    }
}
