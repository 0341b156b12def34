using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Infrastructure;
using Microsoft.Playwright;

namespace Conveyor.Tests.Dashboard;

/// <summary>
/// A browser test of the dashboard against one Api: Chromium launched, the shared servers reset, the Api started
/// (<see cref="StartApiAsync"/>), and all of it stopped afterwards. Pages come from <see cref="NewContextAsync"/>,
/// signed in as the admin by <see cref="SignedInPageAsync"/>.
/// </summary>
public abstract class DashboardPageTest(ConveyorFixture fixture) : IAsyncLifetime
{
    private IPlaywright _playwright = null!;

    protected ConveyorFixture Fixture => fixture;

    protected RunningApp Api { get; private set; } = null!;

    protected IBrowser Browser { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        (_playwright, Browser) = await Chromium.LaunchAsync();
        await fixture.ResetAsync();
        await BeforeApiStartsAsync();
        Api = await StartApiAsync();
    }

    public virtual async Task DisposeAsync()
    {
        await Browser.DisposeAsync();
        _playwright.Dispose();
        await Api.DisposeAsync();
    }

    /// <summary>What the test needs before its Api starts (a worker, a clean operations table); nothing by default.</summary>
    protected virtual Task BeforeApiStartsAsync() => Task.CompletedTask;

    /// <summary>The Api the pages talk to: by default one whose admin key signs in (<see cref="ErrorQueueKit.ApiSettings"/>).</summary>
    protected virtual Task<RunningApp> StartApiAsync() => fixture.StartApiAsync(ErrorQueueKit.ApiSettings());

    /// <summary>A browser context of its own (cookies, storage), with a window of 1400 × 1000 unless told otherwise.</summary>
    protected Task<IBrowserContext> NewContextAsync(BrowserNewContextOptions? options = null) =>
        Browser.NewContextAsync(options ?? new BrowserNewContextOptions { ViewportSize = new ViewportSize { Width = 1400, Height = 1000 } });

    /// <summary>A page of <paramref name="context"/>, signed in to the dashboard as the admin.</summary>
    protected async Task<IPage> SignedInPageAsync(IBrowserContext context)
    {
        var page = await context.NewPageAsync();
        await Chromium.SignInAsAdminAsync(page, Api.BaseAddress);
        return page;
    }
}
